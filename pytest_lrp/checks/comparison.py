"""innvestigate's relevance against the numpy reference's, as plain data: what the `reference` check and
the leak accounting read (filled during the analysis, checks/reference_run.py).

Values are compared per sample and layer relative to the largest |relevance| of that
sample at that layer: |innvestigate - reference| <= atol + rtol * max|reference| + rounding,
with rounding the reference's bound on float32 arithmetic (reference.rules.float32_bound).
An element-wise relative bound would fail on values that are small because their
terms cancel, where float32 (innvestigate) and float64 (the reference) legitimately
differ by far more than 1e-4 of the value itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base.lazy import np
from ..config.rulefile import Tolerance

# The model's outputs (float32 Keras) and the reference's forward pass (float64) must agree
# this well before any relevance is compared: beyond it the reference has the wrong model.
FORWARD_RTOL = 1e-4


@dataclass
class Difference:
    """innvestigate's relevance at one place (the heatmap, or a layer's inputs) vs the reference's."""

    where: str  # "the heatmaps" or "layer 'dense' (Dense, rule z): relevance handed to its inputs"
    max_abs: float
    outside: int
    total: int
    worst_sample: int
    worst_index: tuple
    reference_value: float
    innvestigate_value: float
    scale: float  # max |reference| of the worst sample there
    correlation: str
    sample_outside: int
    sample_total: int
    implementation: str = "innvestigate"  # whose relevance is compared with the reference's

    @property
    def within(self) -> bool:
        return self.outside == 0

    def describe(self) -> str:
        return (
            f"max abs difference {self.max_abs:.3g}; {self.outside} of {self.total} values ({self.outside / self.total:.2%}) "
            f"outside the tolerance; correlation reference vs {self.implementation} {self.correlation}\n"
            f"worst sample {self.worst_sample}: max abs difference {abs(self.innvestigate_value - self.reference_value):.3g} at "
            f"{index_text(self.worst_index)} ({self.reference_value:.6g} reference, {self.innvestigate_value:.6g} {self.implementation}; "
            f"largest |relevance| there {self.scale:.3g}); {self.sample_outside} of {self.sample_total} values outside the tolerance"
        )


@dataclass
class ReferenceComparison:
    """What the reference says about one analysis: why it could not judge, or the differences."""

    tolerance: Tolerance
    skipped: str | None = None  # one line: the layer or rule the reference does not know
    problem: str | None = None  # one line: the reference's forward pass is not the model's
    heatmaps: Difference | None = None
    layers: list = field(default_factory=list)  # Difference per layer with kept relevance, output first
    seconds: float = 0.0  # time the reference took (bench/)
    # innvestigate shows a known bug of its own here (engine/known_bugs.py): the reason, and the
    # differences above are against the reference with that bug; or the bug no longer shows
    known_bug: str | None = None
    bug_fixed: str | None = None
    # per sample: the sum of the reference's own heatmap (what the formula gives, exactly) and how far
    # float32 rounding may move innvestigate's sum from it
    formula_sums: np.ndarray | None = field(default=None, repr=False)
    rounding: np.ndarray | None = field(default=None, repr=False)
    heatmap_bound: np.ndarray | None = field(default=None, repr=False)  # the same, per heatmap element
    formula_heatmap: np.ndarray | None = field(default=None, repr=False)  # the reference's own heatmap

    @property
    def first_divergence(self) -> Difference | None:
        """The first place, from the output down, where innvestigate leaves the tolerance."""
        for difference in self.layers + ([self.heatmaps] if self.heatmaps else []):
            if not difference.within:
                return difference
        return None


def compare(
    where: str,
    reference: np.ndarray,
    actual: np.ndarray,
    tolerance: Tolerance,
    rounding=None,
    implementation: str = "innvestigate",
) -> Difference:
    """Element-wise, per sample relative to that sample's largest |reference| value, plus ``rounding``: how far
    float32 arithmetic may move each element from the float64 reference (reference.rules.float32_bound)."""
    expected = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64).reshape(expected.shape)
    samples = len(expected)
    flat_expected, flat_actual = expected.reshape(samples, -1), actual.reshape(samples, -1)
    difference = np.abs(flat_actual - flat_expected)
    scale = np.max(np.abs(flat_expected), axis=1, initial=0.0)
    bound = tolerance.atol + tolerance.rtol * scale[:, None]
    if rounding is not None:
        bound = bound + np.asarray(rounding, dtype=np.float64).reshape(flat_expected.shape)
    # NaN compares False: a NaN on one side only is out of tolerance.
    outside = ~((difference <= bound) | (np.isnan(flat_expected) & np.isnan(flat_actual)))
    excess = np.where(np.isnan(difference), np.inf, difference - bound)
    worst_sample, worst_flat = np.unravel_index(int(np.argmax(excess)), excess.shape)
    return Difference(
        where=where,
        max_abs=float(np.nanmax(difference)) if np.isfinite(difference).any() else float("nan"),
        outside=int(outside.sum()),
        total=int(outside.size),
        worst_sample=int(worst_sample),
        worst_index=tuple(int(i) for i in np.unravel_index(int(worst_flat), expected.shape[1:])),
        reference_value=float(flat_expected[worst_sample, worst_flat]),
        innvestigate_value=float(flat_actual[worst_sample, worst_flat]),
        scale=float(scale[worst_sample]),
        correlation=correlation(flat_expected, flat_actual),
        sample_outside=int(outside[worst_sample].sum()),
        sample_total=int(outside.shape[1]),
        implementation=implementation,
    )


def correlation(a: np.ndarray, b: np.ndarray) -> str:
    a, b = a.ravel(), b.ravel()
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return "undefined (non-finite values)"
    if a.std() == 0 or b.std() == 0:
        return "undefined (a constant heatmap)"
    return f"{float(np.corrcoef(a, b)[0, 1]):.6f}"


def index_text(index: tuple) -> str:
    return "index (" + ", ".join(str(int(i)) for i in index) + ")"
