"""Collecting results for the summary, the JSON report, JUnit properties and heatmap images."""

from __future__ import annotations

import pytest

from ..base.errors import LrpUsageError
from ..checks.conservation import FORMULA_LEAK
from ..checks.layers import describe_change, largest_change
from ..engine.known_bugs import KNOWN_BUG
from ..engine.workbench import workbench_key
from .accounting import junit_properties, split_text
from .results import REPORT_ATTRIBUTE, outcome_of, result_record
from .width import FittedText

records_key = pytest.StashKey[list]()
OWN_REASONS = (FORMULA_LEAK, KNOWN_BUG)


def before_report(item) -> None:
    """JUnit XML properties; they must be on the item before its report is made."""
    analysis = getattr(item, "analysis", None)
    if analysis is None or getattr(item, "_lrp_properties_recorded", False):
        return
    item._lrp_properties_recorded = True
    item.user_properties.extend(("lrp_note", note) for note in [*analysis.model.notes_for(item.rule), *analysis.notes])
    if item.check != "conservation":
        item.user_properties.extend(junit_properties(item, analysis))
        return
    leak = largest_change(analysis.layers, analysis.worst) if analysis.layers else None
    tolerance = item.rule.tolerance
    item.user_properties.extend(
        [
            ("lrp_max_error", f"{float(analysis.errors.max()):.6g}"),
            ("lrp_max_relative_error", f"{float(analysis.relative_errors.max()):.6g}"),
            ("lrp_tolerance", f"rtol={tolerance.rtol:g} atol={tolerance.atol:g}"),
            ("lrp_leak_layer", f"{leak.name} ({leak.cls})" if leak else ""),
            *junit_properties(item, analysis),
        ]
    )


def is_result(report) -> bool:
    """The report that carries a test's outcome: its call, or its setup when the analysis could not run."""
    return report.when == "call" or (report.when == "setup" and report.failed)


def after_report(item, report, call) -> None:
    """Attach the plain-data record, name the leaking layer in the xfail reason, write images."""
    if report.when == "setup" and isinstance(getattr(call.excinfo, "value", None), LrpUsageError):
        report.longrepr = str(call.excinfo.value)  # its one line, as a failed check shows its message
    setattr(report, REPORT_ATTRIBUTE, result_record(item, report))
    analysis = item.analysis
    # A reason of the plugin's own (a leak by the formula, a known innvestigate bug) already says where and how.
    explained = hasattr(report, "wasxfail") and report.skipped and not report.wasxfail.startswith(OWN_REASONS)
    if analysis is not None and analysis.layers and explained:
        report.wasxfail += "; " + describe_change(largest_change(analysis.layers, analysis.worst), analysis.worst)
    if analysis is not None and analysis.leaks is not None and explained:
        report.wasxfail += "; leak by mechanism (numpy reference): " + split_text(analysis)
    settings = item.config.stash[workbench_key].settings
    folder = settings.path("lrp_heatmaps")
    if folder is not None and analysis is not None:
        wanted = settings.flag("lrp_heatmaps_all") or outcome_of(report) in ("failed", "xfailed", "xpassed-strict")
        if wanted:
            from .heatmap_images import write_heatmap_image

            write_heatmap_image(folder, report.nodeid, analysis)
    from . import html_images  # cheap: matplotlib and numpy load only when pictures are drawn

    if html_images.wanted(item.config, settings):
        html_images.attach_pictures(item, report, settings, item.config.stash[workbench_key].rules_path)


class ResultCollector:
    """Keeps the record of every LRP test report this process sees (on the xdist
    controller: every worker's)."""

    def __init__(self, config):
        self.config = config
        config.stash[records_key] = []

    @pytest.hookimpl(trylast=True)  # after JUnit XML and others have read the report's text as it is
    def pytest_runtest_logreport(self, report) -> None:
        record = getattr(report, REPORT_ATTRIBUTE, None)
        if record is None:
            return
        self.config.stash[records_key].append(record)
        if isinstance(report.longrepr, str) and not isinstance(report.longrepr, FittedText):
            # An LRP failure's details (the check's message): wrapped to the terminal's width when printed.
            report.longrepr = FittedText(report.longrepr)


def finish(config) -> None:
    """On the controller (or without xdist): write the JSON report."""
    if hasattr(config, "workerinput"):
        return
    path = config.stash[workbench_key].settings.path("lrp_report")
    records = config.stash.get(records_key, [])
    if path is not None and records:
        from .json_report import write_json_report

        write_json_report(path, records)


def terminal_summary(terminalreporter, config) -> None:
    if config.stash[workbench_key].settings.flag("lrp_no_summary"):
        return
    from .summary import write_summary

    records = config.stash.get(records_key, [])
    write_summary(terminalreporter, records)
    write_notes(terminalreporter, records)


def write_notes(terminalreporter, records: list) -> None:
    """Each distinct note of the run once, with the model and the rules it concerns."""
    rules: dict = {}
    for record in records:
        for note in record.get("notes", ()):
            rules.setdefault((record["model"], note), []).append(record["rule"])
    for (model, note), rule_ids in rules.items():
        unique = list(dict.fromkeys(rule_ids))
        shown_rules = ", ".join(unique[:6]) + (f" and {len(unique) - 6} more" if len(unique) > 6 else "")
        terminalreporter.write_line(f"lrp: {model}: {note} (rules {shown_rules})")
