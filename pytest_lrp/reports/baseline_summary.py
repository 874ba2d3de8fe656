"""The terminal lines naming the baselines a run wrote (--lrp-update-baselines)."""

from __future__ import annotations

from ..checks.baseline import UPDATE_FLAG, WRITTEN


class BaselineSummary:
    """Registered as a plugin: the terminal lines naming the baselines this run wrote."""

    def __init__(self, config):
        self.config = config

    def pytest_terminal_summary(self, terminalreporter) -> None:
        written = [
            value
            for reports in terminalreporter.stats.values()
            for report in reports
            if getattr(report, "when", None) == "call"
            for key, value in getattr(report, "user_properties", ())
            if key == WRITTEN
        ]
        if written:
            terminalreporter.write_sep("-", f"lrp: wrote {len(written)} baseline{'s' if len(written) != 1 else ''}")
            for line in sorted(written):
                terminalreporter.write_line(f"wrote {line}")
        elif self.config.getoption("lrp_update_baselines", None):
            terminalreporter.write_line(f"lrp: {UPDATE_FLAG}: no baseline written (all present and matching)")
