"""The conservation check: sum of relevance equals the explained output."""

from __future__ import annotations

import numpy as np

from .analysis import Analysis
from .errors import LrpCheckFailed


def check_conservation(analysis: Analysis) -> None:
    if not analysis.finite:
        raise LrpCheckFailed(non_finite_message(analysis))
    failing = analysis.failing
    if failing.any():
        raise LrpCheckFailed(
            f"relevance not conserved: {int(failing.sum())} of {len(failing)} samples outside the tolerance "
            f"({analysis.rule.analyzer} on {analysis.model.name})\n" + worst_sample_line(analysis)
        )


def non_finite_message(analysis: Analysis) -> str:
    per_sample = ~np.all(np.isfinite(analysis.heatmaps.reshape(len(analysis.heatmaps), -1)), axis=1)
    first = int(np.argmax(per_sample))
    return (
        f"heatmap is not finite: {int(per_sample.sum())} of {len(per_sample)} samples contain NaN or Inf "
        f"(first: sample {first}; {analysis.rule.analyzer} on {analysis.model.name})"
    )


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
