"""A finished analysis as plain data: what every check and report reads.

The engine fills it (engine/analysis.py); nothing here runs TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..base.lazy import np
from ..config.rulefile import Rule
from .comparison import ReferenceComparison
from .leaks import LeakAccount


@dataclass
class Analysis:
    model: Any  # models.modelfile.ModelFile (Keras) or pytorch.loading.TorchModel: path, name, notes_for(rule)
    rule: Rule
    inputs: np.ndarray = field(repr=False)
    heatmaps: np.ndarray = field(repr=False)
    outputs: np.ndarray = field(repr=False)  # explained outputs, softmax stripped
    neurons: np.ndarray
    targets: np.ndarray
    softmax_stripped: bool
    layers: list = field(default_factory=list, repr=False)  # LayerRelevance, output first, input last
    reruns: dict = field(
        default_factory=dict, repr=False
    )  # extra heatmaps for determinism / batch_invariance (reruns.py)
    reference: ReferenceComparison | None = field(
        default=None, repr=False
    )  # the numpy reference's verdict (check 'reference')
    leaks: LeakAccount | None = field(default=None, repr=False)  # the leak split by mechanism (LRP and Deep Taylor)
    # Set by a backend where a documented limitation of the library it runs accounts for the whole conservation
    # error (pytorch/limitations.py): the conservation check's expected-failure reason.
    limitation: str | None = None
    # Set by a backend that measured an operation the rule's implementation left out (transformer/accounting.py:
    # a module LXT did not patch): conservation fails whatever the tolerance, with this line.
    violation: str | None = None
    notes: list = field(default_factory=list)  # the library's own warnings during the analysis, for the report

    @property
    def sums(self) -> np.ndarray:
        return heatmap_sums(self.heatmaps)

    @property
    def errors(self) -> np.ndarray:
        return np.abs(self.sums - self.targets)

    @property
    def rounding(self) -> np.ndarray | None:
        """Per sample: how far float32 rounding of the rule's own terms may move sum(R) (the numpy
        reference's bound, reference.rules.float32_bound), or None where no reference ran."""
        return self.reference.rounding if self.reference is not None else None

    @property
    def bounds(self) -> np.ndarray:
        """The largest error allowed per sample by the rule's tolerance."""
        return self.rule.tolerance.bound(self.targets)

    @property
    def rounding_bounds(self) -> np.ndarray:
        """The tolerance for innvestigate against the rule's formula: the rule's tolerance plus float32 rounding."""
        return self.bounds if self.rounding is None else self.bounds + self.rounding

    @property
    def formula_conserves(self) -> np.ndarray:
        """Per sample: the rule's formula (the float64 reference) conserves, and innvestigate's sum is the formula's
        up to float32 rounding of its terms; False where no reference ran."""
        comparison = self.reference
        if comparison is None or comparison.formula_sums is None or self.rounding is None:
            return np.zeros(len(self.targets), dtype=bool)
        formula = np.abs(comparison.formula_sums - self.targets) <= self.bounds
        return formula & (np.abs(self.sums - comparison.formula_sums) <= self.rounding_bounds)

    @property
    def relative_errors(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(
                self.targets != 0, self.errors / np.abs(self.targets), np.where(self.errors == 0, 0.0, np.inf)
            )

    @property
    def failing(self) -> np.ndarray:
        """Not conserved: beyond the tolerance, unless only by float32 rounding of a formula that conserves. (The
        rounding is not added to the tolerance itself: where a denominator is the stabiliser, innvestigate#273,
        the bound is as large as the explosion, which must still count.)"""
        # NaN compares False, so a non-finite sum is counted as failing explicitly.
        return ~(self.errors <= self.bounds) & ~self.formula_conserves

    @property
    def worst(self) -> int:
        """The sample furthest outside (or least inside) its tolerance."""
        with np.errstate(divide="ignore", invalid="ignore"):
            excess = np.where(self.bounds > 0, self.errors / self.bounds, np.where(self.errors > 0, np.inf, 0.0))
        excess = np.where(np.isfinite(self.sums), excess, np.inf)
        return int(np.argmax(excess))

    @property
    def finite(self) -> bool:
        return bool(np.all(np.isfinite(self.heatmaps)))


def heatmap_sums(heatmaps: np.ndarray) -> np.ndarray:
    return heatmaps.reshape(len(heatmaps), -1).sum(axis=1, dtype=np.float64)
