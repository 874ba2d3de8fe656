"""One generated test's result as plain data: for the summary, JSON, JUnit and xdist.

The record is attached to the test report, because reports (unlike
config.stash) travel from pytest-xdist workers to the controller.
"""

from __future__ import annotations

from ..base.lazy import np
from ..checks.layers import largest_change
from .accounting import leak_record, reference_record, split_text

REPORT_ATTRIBUTE = "lrp"


def outcome_of(report) -> str:
    if report.when == "setup" and report.failed:
        return "error"
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.failed and "XPASS(strict)" in str(report.longrepr):
        return "xpassed-strict"
    return report.outcome


def result_record(item, report) -> dict:
    rule = item.rule
    record = {
        "nodeid": report.nodeid,
        "check": item.check,
        "model": item.model_name,
        "model_path": str(item.model_path) if item.model_path else None,
        "rule": rule.id,
        "analyzer": rule.analyzer,
        "params": _plain(rule.params),
        "outcome": outcome_of(report),
        "tolerance": {"rtol": rule.tolerance.rtol, "atol": rule.tolerance.atol},
        "max_error_ceiling": rule.max_error,
        "target": rule.target,
    }
    if record["outcome"] in ("failed", "error", "xpassed-strict"):
        record["message"] = report.longreprtext.strip()
    if hasattr(report, "wasxfail"):  # the xfail reason, as the rule or the check gave it
        record["reason"] = report.wasxfail
    analysis = item.analysis
    if analysis is None:  # the analysis itself failed; the report's message says why
        return {**record, "max_error": None, "errors": [], "layers": [], "leak_layer": None}
    worst = analysis.worst
    # A leaking layer explains a conservation error; for other checks it would mislead.
    leak = largest_change(analysis.layers, worst) if analysis.layers and item.check == "conservation" else None
    record.update(
        samples=len(analysis.errors),
        max_error=_number(np.max(analysis.errors)),
        max_relative_error=_number(np.max(analysis.relative_errors)),
        errors=[_number(e) for e in analysis.errors],
        relative_errors=[_number(e) for e in analysis.relative_errors],
        sums=[_number(s) for s in analysis.sums],
        targets=[_number(t) for t in analysis.targets],
        neurons=[int(n) for n in analysis.neurons],
        failing_samples=int(np.sum(analysis.failing)),
        worst_sample=worst,
        softmax_stripped=analysis.softmax_stripped,
        layers=[
            {
                "name": layer.name,
                "class": layer.cls,
                "relevance": _number(layer.at_output[worst]),
                **({"members": list(layer.members)} if layer.members else {}),
            }
            for layer in analysis.layers
        ],
        leak_layer=_leak(leak, worst),
        # per sample: how far float32 rounding of the rule's terms may move sum(R) (the reference's bound)
        float32_rounding=None if analysis.rounding is None else [_number(r) for r in analysis.rounding],
        known_bug=analysis.reference.known_bug if analysis.reference is not None else None,
    )
    notes = [*analysis.model.notes_for(rule), *analysis.notes]
    if notes:  # e.g. an innvestigate model check overridden (engine/upstream_fixes.py)
        record["notes"] = notes
    if item.check == "conservation":
        record.update(leaks=leak_record(analysis, _number), leak_split=split_text(analysis))
    if item.check == "reference":
        record["reference"] = reference_record(analysis.reference, _number)
    return record


def _leak(layer, sample: int) -> dict | None:
    if layer is None:
        return None
    return {
        "name": layer.name,
        "class": layer.cls,
        "relevance_at_output": _number(layer.at_output[sample]),
        "relevance_at_inputs": _number(layer.at_inputs[sample]),
        "change": _number(layer.change(sample)),
    }


def _number(value):
    """JSON has no NaN or Infinity: non-finite numbers become their string names."""
    value = float(value)
    return value if np.isfinite(value) else str(value)


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
