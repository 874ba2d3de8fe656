"""The conservation check: sum of relevance equals the explained output."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..base.errors import LrpBeyondExpectation, LrpCheckFailed
from ..base.lazy import np
from .layers import describe_change, largest_change, layer_table
from .leaks import judge, layer_lines, split_line

if TYPE_CHECKING:  # the record imports the checks, not the other way round
    from .record import Analysis


def check_conservation(analysis: Analysis) -> None:
    __tracebackhide__ = True  # the plugin's raise lines mean nothing to the user (Analysis.assert_conserved)
    if not analysis.finite:
        raise LrpBeyondExpectation(non_finite_message(analysis))
    ceiling = ceiling_message(analysis)
    if ceiling:
        raise LrpBeyondExpectation(ceiling + "\n" + worst_sample_line(analysis) + leak_lines(analysis))
    failing = analysis.failing
    if not failing.any():
        return
    declared = declared_leaks_line(analysis)
    if declared is None:
        return  # every sample is conserved or leaks only by the mechanisms the rule declares
    raise LrpCheckFailed(
        f"relevance not conserved: {int(failing.sum())} of {len(failing)} samples outside the tolerance "
        f"({analysis.rule.analyzer} on {analysis.model.name})\n" + worst_sample_line(analysis) + declared + leak_lines(analysis)
    )


def leak_verdict(analysis: Analysis):
    """The `leaks:` verdict (checks/leaks.py), or None when the rule declares no leaks or they cannot be accounted."""
    if not analysis.rule.leaks or analysis.leaks is None:
        return None
    return judge(analysis.leaks, analysis.failing, analysis.bounds, analysis.rule.leaks, unexplained_bounds(analysis))


def unexplained_bounds(analysis: Analysis) -> np.ndarray:
    """The tolerance for what the formula does not explain, applied to the relevance that flows.

    innvestigate sums in float32: its rounding grows with the relevance moved around (the
    heatmap's absolute mass), not with the target. Alpha3-beta2 on the example moves 350 units
    of relevance to explain an output of 10, and leaves float32 noise of 1e-4 unexplained:
    above rtol 1e-5 of the target, far below rtol 1e-5 of what it moved.
    """
    mass = np.abs(analysis.heatmaps.reshape(len(analysis.heatmaps), -1)).sum(axis=1, dtype=np.float64)
    return analysis.rule.tolerance.bound(np.maximum(np.abs(analysis.targets), mass))


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
    sample = analysis.worst if analysis.worst in verdict.beyond else min(verdict.beyond)
    totals = analysis.leaks.totals(sample)
    limits = {name: analysis.bounds[sample] for name in totals}
    limits["unexplained"] = unexplained_bounds(analysis)[sample]
    beyond = ", ".join(f"{name} {totals[name]:+.3g} (tolerance {limits[name]:.3g})" for name in verdict.beyond[sample])
    return (
        f"\nleaks: [{names}] declared; {len(verdict.beyond)} of {len(analysis.failing)} samples leak through something else; "
        f"sample {sample}: beyond the tolerance: {beyond}"
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
    """The layer where the worst sample's relevance changes most, the per-layer totals, and the leak by mechanism."""
    sample = analysis.worst
    lines = []
    if analysis.layers:
        lines += [describe_change(largest_change(analysis.layers, sample), sample), layer_table(analysis.layers, sample)]
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
    return (
        f"worst sample {i}: sum(R) = {analysis.sums[i]:.6g}, target {describe_target(analysis, i)} = {target:.6g}, "
        f"error = {analysis.errors[i]:.3g}{share}, tolerance = {analysis.bounds[i]:.3g} "
        f"(atol {tol.atol:g} + rtol {tol.rtol:g} * |target|)"
    )
