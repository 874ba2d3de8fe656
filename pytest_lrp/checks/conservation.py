"""The conservation check: sum of relevance equals the explained output."""

from __future__ import annotations

import pytest

from ..base.errors import LrpBeyondExpectation, LrpCheckFailed
from ..base.lazy import np
from ..config.torch_analyzers import implementation_of
from .layers import describe_change, largest_change, layer_table
from .leaks import judge, layer_lines, split_line
from .record import Analysis

# How an expected failure by the rule's own formula starts its reason (reports keep it as it is).
FORMULA_LEAK = "leaks by its formula"


def check_conservation(analysis: Analysis) -> None:
    __tracebackhide__ = (
        True  # the plugin's raise lines mean nothing to the user (fixtures.LrpAnalysis.assert_conserved)
    )
    if not analysis.finite:
        raise LrpBeyondExpectation(non_finite_message(analysis))
    if analysis.violation:
        raise LrpBeyondExpectation(analysis.violation + "\n" + worst_sample_line(analysis) + leak_lines(analysis))
    bug = analysis.reference.known_bug if analysis.reference is not None else None
    ceiling = ceiling_message(analysis)
    if ceiling and bug:  # the numbers are innvestigate's bug's, not the rule's
        pytest.xfail(f"{bug}; {ceiling.split(' (')[0]}")
    if ceiling and analysis.limitation:  # the library's documented limitation accounts for the whole error
        pytest.xfail(analysis.limitation)
    if ceiling:
        raise LrpBeyondExpectation(ceiling + "\n" + worst_sample_line(analysis) + leak_lines(analysis))
    failing = analysis.failing
    if not failing.any():
        if analysis.rule.strict:
            raise LrpCheckFailed(
                f"[XPASS(strict)] the declared leak [{', '.join(analysis.rule.leaks)}] did not appear: every sample is "
                f"conserved within the tolerance ({analysis.rule.analyzer} on {analysis.model.name}); if the rule or "
                f"{implementation_of(analysis.rule.analyzer)} changed on purpose, drop strict: true or the leaks: list\n"
                + worst_sample_line(analysis)
            )
        return
    declared = declared_leaks_line(analysis)
    if declared is None:  # leaks beyond the tolerance, but only by the mechanisms the rule declares
        pytest.xfail(formula_leak_reason(analysis) + (f"; {bug}" if bug else ""))
    unsplit = unsplit_reason(analysis)
    if unsplit:
        pytest.xfail(unsplit)
    if analysis.leaks is None and formula_explains(analysis):
        pytest.xfail(formula_gap_reason(analysis))
    if analysis.limitation and not declared:
        pytest.xfail(analysis.limitation)
    raise LrpCheckFailed(
        f"relevance not conserved: {int(failing.sum())} of {len(failing)} samples outside the tolerance "
        f"({analysis.rule.analyzer} on {analysis.model.name})\n"
        + worst_sample_line(analysis)
        + declared
        + leak_lines(analysis)
    )


def formula_explains(analysis: Analysis) -> bool:
    """An analyzer without leak mechanisms (gradient family): innvestigate's sums are the formula's own
    (the reference's), within float32 rounding, on every failing sample: the gap to the target is the formula's
    (input x gradient's biases, integrated gradients' Riemann sum), not innvestigate's."""
    comparison = analysis.reference
    if comparison is None or comparison.formula_sums is None or analysis.rule.leaks:
        return False
    failing = analysis.failing
    allowed = analysis.rounding_bounds
    return bool(
        np.all(
            np.abs(analysis.sums - comparison.formula_sums)[failing] <= np.broadcast_to(allowed, failing.shape)[failing]
        )
    )


def formula_gap_reason(analysis: Analysis) -> str:
    sample = analysis.worst
    target = float(analysis.targets[sample])
    gap = float(analysis.sums[sample] - target)
    share = f"{gap / abs(target):+.1%} of the target" if target else f"{gap:+.3g}"
    return (
        f"{FORMULA_LEAK}: {analysis.rule.analyzer} sums to its formula's own value (numpy reference), "
        f"{share} on sample {sample} ({int(analysis.failing.sum())} of {len(analysis.failing)} samples)"
    )


def leak_verdict(analysis: Analysis):
    """The `leaks:` verdict (checks/leaks.py), or None when the rule declares no leaks or they cannot be accounted."""
    if not analysis.rule.leaks or analysis.leaks is None:
        return None
    return judge(analysis.leaks, analysis.failing, analysis.bounds, analysis.rule.leaks, unexplained_bounds(analysis))


def unexplained_bounds(analysis: Analysis) -> np.ndarray:
    """The tolerance for what the formula does not explain: the rule's tolerance plus how far float32
    rounding of the rule's own terms may move the sum (derived per layer and neuron by the reference,
    reference.rules.float32_bound): large where a denominator nearly cancels, tiny elsewhere."""
    return analysis.rounding_bounds


def declared_leaks_line(analysis: Analysis):
    """None when the declared leaks explain every failing sample; else the line saying why not ('' without `leaks:`)."""
    declared = analysis.rule.leaks
    if not declared:
        return ""
    names = ", ".join(declared)
    verdict = leak_verdict(analysis)
    if verdict is None:
        why = analysis.reference.skipped or analysis.reference.problem if analysis.reference else None
        return f"\nleaks: [{names}] declared, but this leak cannot be split by mechanism: {why or 'no numpy reference ran'}"
    if verdict.holds:
        return None
    assert analysis.leaks is not None  # leak_verdict gave a verdict
    sample = analysis.worst if analysis.worst in verdict.beyond else min(verdict.beyond)
    totals = analysis.leaks.totals(sample)
    limits = {name: analysis.bounds[sample] for name in totals}
    limits["unexplained"] = unexplained_bounds(analysis)[sample]
    beyond = ", ".join(f"{name} {totals[name]:+.3g} (tolerance {limits[name]:.3g})" for name in verdict.beyond[sample])
    return (
        f"\nleaks: [{names}] declared; {len(verdict.beyond)} of {len(analysis.failing)} samples leak through something else; "
        f"sample {sample}: beyond the tolerance: {beyond}"
    )


def unsplit_reason(analysis: Analysis) -> str | None:
    """A rule that declares its leaks, with a ceiling, on a model the numpy reference has no layer for: the leak
    cannot be split by mechanism, so it is an expected failure below the ceiling (checked before), which says so;
    the reference's own problems (a model it misreads) still fail."""
    comparison = analysis.reference
    if not analysis.rule.leaks or analysis.rule.max_error is None or comparison is None or not comparison.skipped:
        return None
    detail = comparison.skipped.split(": ", 1)[-1]
    return (
        f"{FORMULA_LEAK} as declared ({', '.join(analysis.rule.leaks)}), not split by mechanism: {detail}; "
        f"below the ceiling max_error={analysis.rule.max_error:g}" + layer_note(analysis)
    )


def layer_note(analysis: Analysis) -> str:
    if not analysis.layers:
        return ""
    layer = largest_change(analysis.layers, analysis.worst)
    return f"; largest change at {layer.name}" if layer is not None else ""


def formula_leak_reason(analysis: Analysis) -> str:
    """'leaks by its formula: bias +557.6%, unbalanced +33.3% at conv2d (16 of 16 samples; declared: bias, unbalanced)'."""
    sample = analysis.worst
    where = ""
    if analysis.layers:
        layer = largest_change(analysis.layers, sample)
        where = f" at {layer.name}"
    split = _beyond_split(analysis, sample) if analysis.leaks is not None else "?"
    return (
        f"{FORMULA_LEAK}: {split}{where} ({int(analysis.failing.sum())} of {len(analysis.failing)} samples; "
        f"declared: {', '.join(analysis.rule.leaks)})"
    )


def _beyond_split(analysis: Analysis, sample: int) -> str:
    """The mechanisms beyond the tolerance on ``sample``, largest first, as shares of |target|: 'bias +71.6%, unbalanced +31.9%'."""
    assert analysis.leaks is not None
    target = float(analysis.targets[sample])
    bound = float(analysis.bounds[sample])
    totals = [(name, value) for name, value in analysis.leaks.totals(sample).items() if abs(value) > bound]
    totals.sort(key=lambda item: -abs(item[1]))
    if target == 0:
        return ", ".join(f"{name} {value:+.3g}" for name, value in totals[:3])
    shares = [(name, 100 * value / abs(target)) for name, value in totals[:3]]
    return ", ".join(
        f"{name} {share:+.1f}%" if abs(share) >= 0.1 else f"{name} {share:+.2g}%" for name, share in shares
    )


def non_finite_message(analysis: Analysis) -> str:
    per_sample = ~np.all(np.isfinite(analysis.heatmaps.reshape(len(analysis.heatmaps), -1)), axis=1)
    first = int(np.argmax(per_sample))
    return (
        f"heatmap is not finite: {int(per_sample.sum())} of {len(per_sample)} samples contain NaN or Inf "
        f"(first: sample {first}; {analysis.rule.analyzer} on {analysis.model.name})"
    )


def ceiling_message(analysis: Analysis):
    """Why the error is beyond the rule's max_error (relative to |target|, at least the batch's mean |target|) and
    whose it is, or None."""
    ceiling = analysis.rule.max_error
    if ceiling is None:
        return None
    # An explosion is an error far above the model's outputs: a sample whose own output is near 0 (an
    # untrained or unsure model) is measured against the batch's mean output, not against its own.
    scale = np.maximum(np.abs(analysis.targets), np.mean(np.abs(analysis.targets)))
    allowed = ceiling * scale + analysis.rule.tolerance.atol
    above = ~(analysis.errors <= allowed)
    if not above.any():
        return None
    return (
        f"relevance error beyond the rule's ceiling max_error={ceiling:g} in {int(above.sum())} of {len(above)} samples "
        f"({analysis.rule.analyzer} on {analysis.model.name}); an expected leak does not excuse this{_whose(analysis, above)}"
    )


def _whose(analysis: Analysis, above: np.ndarray) -> str:
    """Whose explosion it is: the rule's formula (the reference explodes alike) or innvestigate's arithmetic."""
    if analysis.leaks is None:
        return ""
    sample = int(np.flatnonzero(above)[np.argmax(analysis.errors[above])])
    totals = analysis.leaks.totals(sample)
    largest = max(totals, key=lambda name: abs(totals[name]))
    if largest == "unexplained":
        return (
            f"\nwhose: {implementation_of(analysis.rule.analyzer)}'s, not the formula's (the numpy reference does not "
            "explode alike): "
            "report it upstream with this model and input"
        )
    return (
        f"\nwhose: the rule's formula on this model ({largest} {totals[largest]:+.3g} on sample {sample}: "
        f"{EXPLOSIONS[largest]}); if you accept it, drop the rule or set max_error "
        "(pytest --lrp-calibrate writes one measured on your model)"
    )


# How each mechanism of a formula can grow far beyond the output.
EXPLOSIONS = {
    "bias": "a denominator its bias nearly cancels, innvestigate#273",
    "stabilizer": "a denominator near 0, divided by the stabiliser",
    "unbalanced": "neurons of one sign pass on alpha times their relevance, layer after layer",
    "dropped": "relevance dropped where a layer's positive and negative parts each far exceed the output",
    "gradient": "a gradient passed through an Add or a BatchNormalization that scales it",
    "softmax": "AttnLRP's softmax rule x_i (R_i - s_i sum R) where attention logits are large",
    "embeddings": "position or token-type embeddings far larger than the input embeddings",
    "unpatched": "an operation LXT did not patch",
}


def leak_lines(analysis: Analysis) -> str:
    """The layer where the worst sample's relevance changes most, the per-layer totals, and the leak by mechanism."""
    sample = analysis.worst
    lines = []
    if analysis.layers:
        lines += [
            describe_change(largest_change(analysis.layers, sample), sample),
            layer_table(analysis.layers, sample),
        ]
    if analysis.leaks is not None:
        lines.append(split_line(analysis.leaks, sample, float(analysis.targets[sample])))
        per_layer = layer_lines(analysis.leaks, sample)
        if per_layer:
            lines.append(per_layer)
    return "".join("\n" + line for line in lines)


def describe_target(analysis: Analysis, sample: int) -> str:
    neuron = int(analysis.neurons[sample])
    output = f"f(x)[{neuron}]"
    kind = analysis.rule.target
    if kind == "positive_output":
        output = f"max({output}, 0)"
    elif kind == "output_minus_reference":
        output = f"{output} - f(x_ref)[{neuron}]"
    return output + (", softmax stripped" if analysis.softmax_stripped else "")


def worst_sample_line(analysis: Analysis) -> str:
    i = analysis.worst
    tol = analysis.rule.tolerance
    target = analysis.targets[i]
    relative = analysis.relative_errors[i]
    share = f" ({relative:.2%} of |target|)" if np.isfinite(relative) else ""
    rounding = f"; float32 rounding of its terms: {analysis.rounding[i]:.2g}" if analysis.rounding is not None else ""
    return (
        f"worst sample {i}: sum(R) = {analysis.sums[i]:.6g}, target {describe_target(analysis, i)} = {target:.6g}, "
        f"error = {analysis.errors[i]:.3g}{share}, tolerance = {analysis.bounds[i]:.3g} "
        f"(atol {tol.atol:g} + rtol {tol.rtol:g} * |target|){rounding}"
    )
