"""The leak by mechanism and the reference's verdict, as plain data for the JSON report,
JUnit properties, the terminal summary and xfail reasons.

Each number is for the analysis' worst sample, as the other per-layer numbers of a record.
"""

from __future__ import annotations

from ..base.lazy import np
from ..checks.conservation import leak_verdict
from ..checks.leaks import UNEXPLAINED, short_split


def leak_verdict_name(analysis) -> str:
    """conserved | explained (by the declared leaks) | not explained | not conserved (no `leaks:`)."""
    if not analysis.failing.any():
        return "conserved"
    verdict = leak_verdict(analysis)
    if verdict is None:
        return "not explained" if analysis.rule.leaks else "not conserved"
    return "explained" if verdict.holds else "not explained"


def leak_record(analysis, number) -> dict | None:
    account = analysis.leaks
    if account is None:
        return None
    sample = analysis.worst
    layers = []
    for layer in account.layers:
        entry = {
            "name": layer.name,
            "class": layer.cls,
            "rule": layer.rule,
            "change": None if layer.change is None else number(layer.change[sample]),
        }
        entry.update({name: number(layer.mechanisms[name][sample]) for name in account.mechanisms})
        rest = layer.unexplained
        entry[UNEXPLAINED] = None if rest is None else number(rest[sample])
        layers.append(entry)
    return {
        "declared": list(analysis.rule.leaks),
        "verdict": leak_verdict_name(analysis),
        "sample": sample,
        "total": {name: number(value) for name, value in account.totals(sample).items()},
        "max_abs_total": {
            name: number(np.max(np.abs(account.total(name)))) for name in (*account.mechanisms, UNEXPLAINED)
        },
        "layers": layers,
    }


def reference_record(comparison, number) -> dict | None:
    if comparison is None:
        return None

    def difference(d):
        return (
            None
            if d is None
            else {
                "where": d.where,
                "max_abs": number(d.max_abs),
                "outside": d.outside,
                "total": d.total,
                "worst_sample": d.worst_sample,
                "worst_index": list(d.worst_index),
                "reference_value": number(d.reference_value),
                "innvestigate_value": number(d.innvestigate_value),
            }
        )

    first = comparison.first_divergence
    return {
        "tolerance": {"rtol": comparison.tolerance.rtol, "atol": comparison.tolerance.atol},
        "skipped": comparison.skipped,
        "problem": comparison.problem,
        "first_divergence": first.where if first else None,
        "known_bug": comparison.known_bug,
        "heatmaps": difference(comparison.heatmaps),
        "layers": [difference(d) for d in comparison.layers],
        "seconds": round(comparison.seconds, 4),
    }


def junit_properties(item, analysis) -> list:
    """Per mechanism (and unexplained) the worst sample's leak; for the reference check its largest difference."""
    if item.check == "conservation" and analysis.leaks is not None:
        totals = analysis.leaks.totals(analysis.worst)
        return [(f"lrp_leak_{name}", f"{value:.6g}") for name, value in totals.items()] + [
            ("lrp_leak_verdict", leak_verdict_name(analysis))
        ]
    comparison = analysis.reference
    if item.check == "reference" and comparison is not None and comparison.heatmaps is not None:
        first = comparison.first_divergence
        return [
            ("lrp_reference_max_difference", f"{comparison.heatmaps.max_abs:.6g}"),
            ("lrp_reference_divergence", first.where if first else ""),
        ]
    return []


def split_text(analysis) -> str:
    """'bias -18.6%, unexplained +0.0%': the mechanisms of the worst sample's leak, for the summary and xfail reasons."""
    if analysis.leaks is None:
        return ""
    sample = analysis.worst
    return short_split(analysis.leaks, sample, float(analysis.targets[sample]))
