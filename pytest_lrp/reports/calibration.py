"""`--lrp-calibrate=PATH`: measure every rule of the run on the user's model and write a rule file that passes there.

Where the measuring happens: in the process that ran the test (an xdist worker, or the
only one), from the item's analysis. Each generated test's report gets a plain-data
``lrp_calibration`` entry (it travels to the xdist controller with the report, as the
``lrp`` record does); the golden heatmaps are written there too, once per (model, rule),
into the baseline folder the new rule file will use (checks/baseline.py). The controller
(or the only process) turns the entries into the rule file at the end of the session
(config/calibrate.py) and names it in the run's last line.

The run's outcomes stay what they are: a calibration run judges the model with the
configured suite, as any run does, and its exit status says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ..base.errors import LrpBeyondExpectation, LrpCheckFailed, LrpUsageError, shown
from ..base.lazy import np
from ..checks.conservation import FORMULA_LEAK, ceiling_message, declared_leaks_line, unexplained_bounds
from ..checks.leaks import MECHANISMS, UNEXPLAINED
from ..engine.workbench import workbench_key
from .accounting import split_text

FLAG = "--lrp-calibrate"
ATTRIBUTE = "lrp_calibration"
# A calibrated ceiling: MARGIN times the measured max relative error, plus the rule's rtol.
MARGIN = 2.0


def register(config: pytest.Config, item_class: type) -> None:
    """Called from pytest_configure: with --lrp-calibrate, refuse an existing target at once, then measure
    the generated tests (``item_class``, items.LrpItem)."""
    value = config.getoption("lrp_calibrate", None)
    if not value:
        return
    target = (Path(config.invocation_params.dir) / value).resolve()
    problem = target_problem(target)
    if problem:
        raise pytest.UsageError(problem)
    config.pluginmanager.register(Calibration(config, target, item_class), "lrp-calibration")


def target_problem(target: Path) -> str | None:
    if target.suffix not in (".yaml", ".yml"):
        return f"{shown(target)}: {FLAG} writes a rule file; name it *.yaml or *.yml"
    if target.exists():
        return (
            f"{shown(target)}: already exists; {FLAG} does not overwrite a rule file (remove it or name another path)"
        )
    return None


class Calibration:
    def __init__(self, config: pytest.Config, target: Path, item_class: type):
        self.config, self.target, self.item_class = config, target, item_class
        self.entries: list = []
        self.written_baselines: set = set()
        self.outcome: str | None = None  # the line for the end of the run

    # --- in the process that runs the test ------------------------------------------------

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if not isinstance(item, self.item_class) or item.model_path is None:
            return
        # The call, or a setup that did not let it run: a crash, or innvestigate's known crash as an expected failure.
        if not (report.when == "call" or (report.when == "setup" and (report.failed or hasattr(report, "wasxfail")))):
            return
        entry = self._entry(item, report, call)
        setattr(report, ATTRIBUTE, entry)

    def _entry(self, item, report, call) -> dict:
        workbench = self.config.stash[workbench_key]
        rule_file = workbench.rule_file
        settings = workbench.settings
        inputs = settings.inputs(rule_file)
        entry = {
            "model": item.model_name,
            "model_path": str(item.model_path),
            "rule": item.rule.id,
            "check": item.check,
            "result": _result(report, call),
            "message": _message(call.excinfo),
            # pytest-lrp's own verdict: the gap is the formula's (checks/conservation.py), a divergence would fail
            "formula_leak": _message(call.excinfo).startswith(FORMULA_LEAK)
            if _result(report, call) == "xfailed"
            else False,
            "spec": rule_spec(item.rule, [r.id for r in rule_file.rules].index(item.rule.id) if rule_file else 0),
            "rules_path": str(workbench.rules_path),
            "packaged": workbench.packaged_suite,
            "inputs": str(inputs) if inputs is not None else None,
            "samples": settings.samples(rule_file),
            "seed": settings.seed(rule_file),
        }
        analysis = item.analysis
        if analysis is not None:
            entry["measured"] = measure(analysis)
            entry["baseline"] = self._write_baseline(item, report, analysis)
        return entry

    def _write_baseline(self, item, report, analysis) -> str | None:
        """The golden heatmaps of (model, rule) where the new rule file's run will look for them."""
        from ..checks.baseline import WRITTEN, baseline_path, record, write_baseline

        settings = self.config.stash[workbench_key].settings
        path = baseline_path(settings, self.target, analysis)
        if not analysis.finite:
            return None
        if path not in self.written_baselines:
            self.written_baselines.add(path)
            write_baseline(path, analysis.heatmaps, record(analysis))
            report.user_properties.append((WRITTEN, f"{shown(path)} (calibration)"))
        return str(path)

    # --- on the controller (or the only process) -------------------------------------------

    def pytest_runtest_logreport(self, report) -> None:
        entry = getattr(report, ATTRIBUTE, None)
        if entry is not None:
            self.entries.append(entry)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus) -> None:
        if hasattr(self.config, "workerinput"):
            return
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            self.outcome = f"lrp: {FLAG}: the run was interrupted; {shown(self.target)} not written"
            return
        if not self.entries:
            self.outcome = f"lrp: {FLAG}: no generated LRP test ran on a model; {shown(self.target)} not written"
            return
        from ..config.calibrate import write_calibrated

        try:
            summary = write_calibrated(self.target, self.entries, margin=MARGIN)
        except LrpUsageError as exc:
            self.outcome = f"lrp: {FLAG}: {exc}"
            return
        self.outcome = (
            f"lrp: wrote {shown(self.target)}: calibrated on {summary.models} ({summary.inputs}; {summary.rules}); "
            f"run pytest --lrp-rules={shown(self.target)}"
        )

    @pytest.hookimpl(trylast=True)  # the run's last line, after the list of baselines written
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.outcome:
            terminalreporter.write_line(self.outcome)


def _result(report, call) -> str:
    """passed | failed (the check does not hold) | xfailed (the check's own expected failure, such as a known
    innvestigate bug) | skipped | crashed (the analysis or the check raised) | unanalyzable (the analysis is
    an expected failure: innvestigate's known crash)."""
    if report.when == "setup":
        return "unanalyzable" if hasattr(report, "wasxfail") else "crashed"
    excinfo = call.excinfo
    if excinfo is None:
        return "passed"
    if excinfo.errisinstance(pytest.xfail.Exception):
        return "xfailed"
    if isinstance(excinfo.value, (LrpCheckFailed, LrpBeyondExpectation)):
        return "failed"
    if excinfo.errisinstance(pytest.skip.Exception):
        return "skipped"
    return "crashed"


def _message(excinfo) -> str:
    """The first line of a check's message, or the exception of a crash (engine/crashes.py)."""
    if excinfo is None:
        return ""
    from ..engine.crashes import first_line

    exc = excinfo.value
    known = (LrpCheckFailed, LrpBeyondExpectation, LrpUsageError, pytest.skip.Exception, pytest.xfail.Exception)
    return first_line(exc) if isinstance(exc, known) else f"{type(exc).__name__}: {first_line(exc)}"


def rule_spec(rule, index: int) -> dict:
    from .results import _plain

    tolerance = lambda t: {"rtol": t.rtol, "atol": t.atol}  # noqa: E731
    return {
        "index": index,
        "id": rule.id,
        "analyzer": rule.analyzer,
        "params": _plain(rule.params),
        "target": rule.target,
        "neuron_selection": rule.neuron_selection,
        "tolerance": tolerance(rule.tolerance),
        "baseline_tolerance": tolerance(rule.baseline_tolerance),
        "reference_tolerance": tolerance(rule.reference_tolerance),
        "checks": list(rule.checks),
        "leaks": list(rule.leaks),
        "max_error": rule.max_error,
        "xfail": {"reason": rule.xfail.reason, "strict": rule.xfail.strict} if rule.xfail else None,
    }


def measure(analysis) -> dict:
    """What calibration needs of one analysis, as plain data.

    ``mode`` is how its conservation test can be written so that it passes on this model:
    conserves (within the tolerance), leaks (declare ``found``; ``appeared`` when a sample
    is outside the tolerance), xfail (not conserved and no split by mechanism to declare:
    an analyzer without mechanisms, or no numpy reference) or fails (``problem``: what no
    declaration excuses, such as an unexplained rest or a non-finite heatmap).
    """
    relative = analysis.relative_errors
    finite_relative = relative[np.isfinite(relative)]
    worst = analysis.worst
    failing = analysis.failing
    measured = {
        "samples": len(analysis.errors),
        "finite": analysis.finite,
        "max_relative_error": float(np.max(relative)) if analysis.finite else None,
        "max_relative_sample": int(np.argmax(np.where(np.isfinite(relative), relative, np.inf)))
        if len(relative)
        else 0,
        "worst_sample": worst,
        "failing": int(failing.sum()),
        "split": split_text(analysis),
        "found": [],
        "beyond": {},
        "ceiling": None,
        "appeared": False,
        "problem": None,
        # pytest-lrp versions that add float32 rounding of the rule's terms to the tolerance (checks/record.py)
        "rounding": getattr(analysis, "rounding", None) is not None,
    }
    if not analysis.finite:
        return {**measured, "mode": "fails", "problem": "heatmap not finite (NaN or Inf)"}
    peak = float(np.max(relative)) if len(relative) else 0.0
    if np.isfinite(peak) and finite_relative.size == relative.size:
        measured["ceiling"] = ceiling(peak, analysis.rule.tolerance.rtol)
    if analysis.leaks is not None:
        measured["beyond"] = beyond_tolerance(analysis)
        measured["found"] = [name for name in MECHANISMS if name in measured["beyond"]]
    if not failing.any():
        return {**measured, "mode": "leaks" if measured["found"] else "conserves"}
    if analysis.leaks is None:
        problem = _conservation_problem(analysis, (), measured["ceiling"])
        return {**measured, "mode": "xfail" if problem is None else "fails", "problem": problem, "appeared": True}
    if not measured["found"]:
        # Outside the tolerance only as a sum of mechanisms each within it: declare the largest one.
        totals = analysis.leaks.totals(worst)
        measured["found"] = [max(MECHANISMS, key=lambda name: abs(totals[name]))]
    problem = _conservation_problem(analysis, tuple(measured["found"]), measured["ceiling"])
    return {
        **measured,
        "mode": "leaks" if problem is None else "fails",
        "problem": problem,
        "appeared": problem is None,
    }


def ceiling(peak: float, rtol: float) -> float:
    """MARGIN x the measured max relative error + rtol, rounded up to three significant digits."""
    value = MARGIN * peak + rtol
    if value <= 0:
        return rtol
    scale = 10.0 ** (np.floor(np.log10(value)) - 2)
    # The quotient of a number with three significant digits can read 100.00000000000001.
    return float(f"{np.ceil(value / scale - 1e-9) * scale:.3g}")


def beyond_tolerance(analysis) -> dict:
    """Per mechanism (and the unexplained rest) beyond the tolerance on some sample: how many, and the largest."""
    bounds = analysis.bounds
    rest_bounds = unexplained_bounds(analysis)
    found = {}
    for name in (*MECHANISMS, UNEXPLAINED):
        total = analysis.leaks.total(name)
        limit = rest_bounds if name == UNEXPLAINED else bounds
        over = ~(np.abs(total) <= limit)
        if name == UNEXPLAINED:
            over &= analysis.failing  # as the leak verdict judges it (checks/leaks.py)
        if not over.any():
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            excess = np.where(over, np.abs(total) / np.where(limit > 0, limit, np.inf), -1.0)
        sample = int(np.argmax(excess))
        found[name] = {
            "samples": int(over.sum()),
            "sample": sample,
            "value": float(total[sample]),
            "bound": float(limit[sample]),
        }
    return found


def _conservation_problem(analysis, leaks: tuple, max_error) -> str | None:
    """None when the conservation test passes (or is the declared expected failure) with these expectations."""
    rule = dataclasses.replace(analysis.rule, leaks=leaks, max_error=max_error, xfail=None)
    candidate = dataclasses.replace(analysis, rule=rule)
    message = ceiling_message(candidate)
    if message:
        return message
    if not leaks:
        return None  # no mechanisms: written as an expected failure
    line = declared_leaks_line(candidate)
    return None if line is None else line.strip()
