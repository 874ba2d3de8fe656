"""What zennit 1.0 (and 0.5) cannot do by design, recognised so that it is an expected failure naming the
limitation, not a fresh red test.

zennit attaches rules to modules. An operation outside any module gets no rule: relevance passes it as a
plain gradient. ``out + identity`` written in a residual block's forward hands the relevance to both operands
whole, so it is counted twice; a functional ReLU after pooling drops what reaches its dead inputs. zennit's answer is a canonizer that puts a module there (ResNetCanonizer for torchvision's ResNets);
for a block of the user's own there is none. Recognised only where the operations outside modules account
for the whole conservation error, within the rule's tolerance (and float32 rounding): any other leak on top still fails. A rule
expected to leak by its formula (xfail) compounds its leak with the copies; there the copies must only be
there, beyond the tolerance, for an explosion past its ceiling to be the limitation's (with the numpy reference,
the leak accounting names the copies' mechanism, `gradient`, at the container's own operations).
"""

from __future__ import annotations

from ..base.lazy import np

OWN_OPERATIONS = " (own operations)"
# The copies are summed in float32 from gradients whose values cancel: they account for the error up to this
# share of themselves.
ROUNDING = 1e-3
# Copies move a share of the target; less than this at the operations outside modules is something else.
SUBSTANTIAL = 1e-2


def functional_limitation(analysis, functional: str | None) -> str | None:
    """The expected-failure reason, or None where the limitation does not explain every failing sample."""
    if functional is None or not analysis.rule.analyzer.startswith("zennit."):
        return None
    failing = analysis.failing
    if not failing.any():
        return None
    own = [layer for layer in analysis.layers if layer.name.endswith(OWN_OPERATIONS)]
    if not own:
        return None
    added = np.sum([layer.at_inputs - layer.at_output for layer in own], axis=0)
    scale = np.maximum(np.abs(analysis.targets), np.mean(np.abs(analysis.targets)))
    if not np.any(np.abs(added[failing]) > SUBSTANTIAL * scale[failing]):
        # Not copies: a canonizer's own modules (zennit's Sum for a ResNet's addition) land among a block's
        # own operations too, and their stabiliser moves relevance by far less.
        return None
    rest = (analysis.sums - analysis.targets) - added
    if analysis.rule.xfail is not None or analysis.rule.leaks:
        # A rule expected to leak by its own formula: its leak compounds with the copies (what reaches the
        # input is copied first), so the two cannot be told apart; the copies must be there, beyond the tolerance.
        if not np.any(np.abs(added[failing]) > analysis.bounds[failing]):
            return None
    elif not np.all(np.abs(rest[failing]) <= analysis.bounds[failing] + ROUNDING * np.abs(added[failing])):
        return None
    sample = analysis.worst
    target = float(analysis.targets[sample])
    share = f"{float(added[sample]) / abs(target):+.1%} of the target" if target else f"{float(added[sample]):+.3g}"
    return (
        f"zennit limitation: {functional} is outside any module, so zennit applies no rule to it and relevance "
        f"passes it as a plain gradient ({share} on sample {sample}, at operations outside modules); a canonizer "
        "that makes it a module (zennit's ResNetCanonizer for torchvision ResNets) removes it"
    )
