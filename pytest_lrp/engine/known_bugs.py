"""innvestigate 2.1.2's own bugs, recognised by their signature and reported as expected failures.

A user cannot fix these and should not read them as a fresh failure of their model. Each is
recognised from evidence, not assumed: the numpy reference runs with and without the bug, the bug
must matter on this model (the two differ), and innvestigate is then judged against the variant
with the bug, so that any other divergence still fails. The reasons
name the bug, the layer and where its minimal reproduction is documented ("Known innvestigate
bugs" in the docs). Expected failures are strict: where innvestigate no longer shows the bug,
the test fails as XPASS(strict), so a fixed innvestigate shows up.

Pure Python over the reference's results; the engine calls it (reference_run.py).
"""

from __future__ import annotations

from dataclasses import dataclass

# How the reason of such an expected failure starts (reports keep it as it is).
KNOWN_BUG = "known innvestigate 2.1.2 bug"
DOCS = "docs: Known innvestigate bugs"
BN_FUSION = (
    "BatchNormalization fused as gamma / sqrt(variance**2 + eps) with gamma left out of the bias "
    "(apply_mapping_to_fused_bn_layer)"
)


@dataclass
class KnownBug:
    name: str
    layers: list

    @property
    def reason(self) -> str:
        where = f" at {', '.join(repr(name) for name in self.layers)}" if self.layers else ""
        return f"{KNOWN_BUG}: {self.name}{where}; nothing to fix in your model ({DOCS})"


def bn_fusion_verdict(exact_differs: bool, matches_exact: bool, bn_layers: list):
    """(KnownBug or None, 'fixed' message or None) for one LRP analysis of a model with BatchNormalization.

    ``exact_differs``: the reference with innvestigate's fusion differs from the exact one beyond the
    tolerance (an untrained BatchNormalization, mean 0 and variance 1, hides the bug). Where it does and
    innvestigate is not exact, innvestigate is judged against the reference with the bug: the check
    passes as the known bug's expected failure, or shows what differs beyond it."""
    if not exact_differs:
        return None, None
    if not matches_exact:
        return KnownBug(BN_FUSION, bn_layers), None
    if matches_exact:
        return None, (
            f"[XPASS(strict)] {KNOWN_BUG} no longer shows: innvestigate now fuses BatchNormalization "
            f"({', '.join(bn_layers)}) exactly; update pytest-lrp's known bugs"
        )
    return None, None
