"""The conservation check: sum of relevance equals the explained output."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..base.errors import LrpBeyondExpectation, LrpCheckFailed
from ..base.lazy import np
from .layers import describe_change, largest_change, layer_table

if TYPE_CHECKING:  # the record imports the checks, not the other way round
    from .record import Analysis


def check_conservation(analysis: Analysis) -> None:
    if not analysis.finite:
        raise LrpBeyondExpectation(non_finite_message(analysis))
    ceiling = ceiling_message(analysis)
    if ceiling:
        raise LrpBeyondExpectation(ceiling + "\n" + worst_sample_line(analysis) + leak_lines(analysis))
    failing = analysis.failing
    if failing.any():
        raise LrpCheckFailed(
            f"relevance not conserved: {int(failing.sum())} of {len(failing)} samples outside the tolerance "
            f"({analysis.rule.analyzer} on {analysis.model.name})\n" + worst_sample_line(analysis) + leak_lines(analysis)
        )


def non_finite_message(analysis: Analysis) -> str:
    per_sample = ~np.all(np.isfinite(analysis.heatmaps.reshape(len(analysis.heatmaps), -1)), axis=1)
    first = int(np.argmax(per_sample))
    return (
        f"heatmap is not finite: {int(per_sample.sum())} of {len(per_sample)} samples contain NaN or Inf "
        f"(first: sample {first}; {analysis.rule.analyzer} on {analysis.model.name})"
    )


def ceiling_message(analysis: Analysis):
    """Why the error is beyond the rule's max_error (a relative error), or None."""
    ceiling = analysis.rule.max_error
    if ceiling is None:
        return None
    allowed = ceiling * np.abs(analysis.targets) + analysis.rule.tolerance.atol
    above = ~(analysis.errors <= allowed)
    if not above.any():
        return None
    return (
        f"relevance error beyond the rule's ceiling max_error={ceiling:g} in {int(above.sum())} of {len(above)} samples "
        f"({analysis.rule.analyzer} on {analysis.model.name}); an expected leak does not excuse this"
    )


def leak_lines(analysis: Analysis) -> str:
    """The layer where the worst sample's relevance changes most, and the per-layer totals."""
    if not analysis.layers:
        return ""
    sample = analysis.worst
    return "\n" + describe_change(largest_change(analysis.layers, sample), sample) + "\n" + layer_table(analysis.layers, sample)


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
    return (
        f"worst sample {i}: sum(R) = {analysis.sums[i]:.6g}, target {describe_target(analysis, i)} = {target:.6g}, "
        f"error = {analysis.errors[i]:.3g}{share}, tolerance = {analysis.bounds[i]:.3g} "
        f"(atol {tol.atol:g} + rtol {tol.rtol:g} * |target|)"
    )
