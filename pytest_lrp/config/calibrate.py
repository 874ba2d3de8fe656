"""The rule file `--lrp-calibrate=PATH` writes: the measurements of a run (reports/calibration.py) as
expectations that pass on the model and inputs they were measured on.

Per rule, over every model of the run:
- a rule whose analysis or a check crashed is left out (a comment says which and why);
- ``checks``: the configured checks that held; one that failed is left out, with a comment;
- conservation: ``leaks:`` the mechanisms beyond the tolerance on some sample, ``strict: true``
  where the leak appeared (a sample outside the tolerance, explained by them), ``max_error``
  MARGIN x the measured max relative error + rtol; an analyzer without mechanisms that does not
  conserve becomes an expected failure; what no declaration excuses (the unexplained rest, a
  non-finite heatmap) leaves conservation out, with a comment;
- ``baseline: true``: the golden heatmaps the run wrote beside the new file.

Pure data in, text out; nothing here runs TensorFlow.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..base.atomic import write_atomically
from ..base.errors import LrpUsageError, shown
from ..base.lazy import yaml
from .rulefile import (
    BASELINE_TOLERANCE,
    LEAK_MECHANISMS,
    REFERENCE_TOLERANCE,
    Tolerance,
    accounts_leaks,
    load_rule_file,
)


@dataclass
class Written:
    models: str
    inputs: str
    rules: str


@dataclass
class Calibrated:
    """One rule as it will be written (``keys``), or left out (``keys`` None), with its comment lines."""

    index: int
    rule_id: str
    keys: dict | None
    comments: list


def write_calibrated(target: Path, entries: list, margin: float) -> Written:
    target = Path(target)
    if target.exists():
        raise LrpUsageError(f"{shown(target)}: already exists; not overwritten")
    text, written = calibrated_text(target, entries, margin)
    with tempfile.TemporaryDirectory() as folder:  # the file must load as it is written
        trial = Path(folder, target.name)
        trial.write_text(text, encoding="utf-8")
        try:
            load_rule_file(trial)
        except LrpUsageError as exc:
            raise LrpUsageError(f"the calibrated rule file would not load ({exc}); please report this") from None
    write_atomically(target, lambda f: f.write(text.encode("utf-8")))
    return written


def calibrated_text(target: Path, entries: list, margin: float):
    first = entries[0]
    model_paths = list(dict.fromkeys(e["model_path"] for e in entries))
    models = {e["model_path"]: e["model"] for e in entries}
    samples = next((e["measured"]["samples"] for e in entries if e.get("measured")), first["samples"])
    by_rule: dict = {}
    for entry in entries:
        by_rule.setdefault(entry["rule"], {}).setdefault(entry["model_path"], []).append(entry)
    rules = sorted((calibrate_rule(per_model, models, margin) for per_model in by_rule.values()), key=lambda r: r.index)
    kept = [r for r in rules if r.keys is not None]
    if not kept:
        raise LrpUsageError(
            "no rule could be calibrated (each crashed or did not run); nothing written: "
            + "; ".join(line.lstrip("# ") for r in rules for line in r.comments[:1])
        )

    folder = target.parent
    source = "pytest-lrp's default suite" if first["packaged"] else shown(first["rules_path"])
    inputs = first["inputs"]
    lines = _header(source, [shown(p) for p in model_paths], samples, shown(inputs) if inputs else None, margin)
    lines.append("defaults:")
    lines.append(f"  models: {_flow([_relative(p, folder) for p in model_paths])}")
    if inputs:
        lines.append(f"  inputs: {_flow(_relative(inputs, folder))}")
    else:
        lines.append(f"  seed: {int(first['seed'])}  # random inputs in the model's input shape")
    lines.append(f"  samples: {int(samples)}")
    lines.append("")
    lines.append("rules:")
    for rule in rules:
        lines.extend(f"  {line}" for line in rule.comments)
        if rule.keys is None:
            lines.append("")
            continue
        for number, (key, value) in enumerate(rule.keys.items()):
            lines.append(f"  {'- ' if number == 0 else '  '}{key}: {_flow(value)}")
        lines.append("")
    lines.extend(_not_run(first["rules_path"], by_rule))
    left_out = len(rules) - len(kept)
    written = Written(
        models=", ".join(shown(p) for p in model_paths),
        inputs=f"{samples} inputs",
        rules=f"{len(kept)} rule{'s' if len(kept) != 1 else ''}" + (f", {left_out} left out" if left_out else ""),
    )
    return "\n".join(lines).rstrip("\n") + "\n", written


def calibrate_rule(per_model: dict, models: dict, margin: float) -> Calibrated:
    entries = [e for group in per_model.values() for e in group]
    spec = entries[0]["spec"]
    rule_id = spec["id"]
    comments = []

    crashes = [e for e in entries if e["result"] == "crashed"]
    if crashes:
        crash = crashes[0]
        return Calibrated(
            spec["index"],
            rule_id,
            None,
            [
                f"# rule '{rule_id}' ({spec['analyzer']}) left out: its {crash['check']} test crashed on {crash['model']}: "
                f"{_one_line(crash['message']) or 'see the run'}",
            ],
        )
    unanalyzable = [e for e in entries if e["result"] == "unanalyzable"]
    if unanalyzable:
        first = unanalyzable[0]
        return Calibrated(
            spec["index"],
            rule_id,
            None,
            [
                f"# rule '{rule_id}' ({spec['analyzer']}) left out: it cannot be analyzed on {first['model']}, "
                f"an expected failure: {_one_line(first['message']) or 'see the run'}",
            ],
        )
    configured = spec["checks"]
    for path, group in per_model.items():
        missing = [c for c in configured if c not in {e["check"] for e in group}]
        if missing:
            return Calibrated(
                spec["index"],
                rule_id,
                None,
                [
                    f"# rule '{rule_id}' ({spec['analyzer']}) left out: its {', '.join(missing)} test(s) did not run on "
                    f"{models[path]} in the calibration run (deselected or stopped)",
                ],
            )

    measured = {path: next(e["measured"] for e in group if e.get("measured")) for path, group in per_model.items()}
    failed: dict[str, str] = {}
    for entry in entries:
        if entry["result"] == "failed" and entry["check"] not in ("conservation", "baseline"):
            failed.setdefault(entry["check"], f"{entry['model']}: {_one_line(entry['message'])}")
    checks = [c for c in configured if c not in failed and c != "baseline"]
    expected: dict[str, str] = {}
    for entry in entries:
        if entry["result"] == "xfailed" and entry["check"] not in ("conservation", "baseline"):
            expected.setdefault(entry["check"], f"{entry['model']}: {_one_line(entry['message'])}")

    keys: dict[str, Any] = {"id": rule_id, "analyzer": spec["analyzer"]}
    if spec["params"]:
        keys["params"] = spec["params"]
    if spec["target"] != "output":
        keys["target"] = spec["target"]
    if spec["neuron_selection"] != "max_activation":
        keys["neuron_selection"] = spec["neuron_selection"]
    _tolerance_key(keys, "tolerance", spec["tolerance"], Tolerance())
    _tolerance_key(keys, "baseline_tolerance", spec["baseline_tolerance"], BASELINE_TOLERANCE)
    if "reference" in checks:
        _tolerance_key(keys, "reference_tolerance", spec["reference_tolerance"], REFERENCE_TOLERANCE)

    tolerance = spec["tolerance"]
    rounding = " + float32 rounding" if any(m.get("rounding") for m in measured.values()) else ""
    bound = f"atol {tolerance['atol']:g} + rtol {tolerance['rtol']:g} * |target|{rounding}"
    for path, m in measured.items():
        comments.append(f"# measured on {models[path]} ({m['samples']} inputs): " + _measured_line(m, bound))
    runs = {path: next((e for e in group if e["check"] == "conservation"), None) for path, group in per_model.items()}
    expectations, more = (
        _conservation(spec, measured, runs, models, margin, bound) if "conservation" in checks else ({}, [])
    )
    comments.extend(more)
    if expectations is None:
        checks.remove("conservation")
        expectations = {}
        run = next((e for e in entries if e["check"] == "conservation" and e["result"] == "xfailed"), None)
        if run is not None:
            comments.append(f"# (in the calibration run it failed as expected: {_one_line(run['message'])})")
    if expected:
        comments.append(
            "# checks kept that fail as expected (their own reason): "
            + "; ".join(f"{c} ({why})" for c, why in expected.items())
        )
    if failed:
        comments.append("# checks that failed, left out: " + "; ".join(f"{c} ({why})" for c, why in failed.items()))

    baselines = [e.get("baseline") for group in per_model.values() for e in group[:1]]
    baseline = all(baselines) and "determinism" not in failed
    if not all(baselines):
        comments.append("# no baseline: a heatmap was not finite")
    elif "determinism" in failed:
        comments.append("# no baseline: two runs gave different heatmaps (determinism failed)")
    if not checks and not baseline:
        return Calibrated(
            spec["index"],
            rule_id,
            None,
            [f"# rule '{rule_id}' ({spec['analyzer']}) left out: no check held", *comments],
        )
    keys["checks"] = checks or ["baseline"]  # nothing else held: the golden heatmaps alone
    keys.update(expectations)
    if baseline and checks:
        keys["baseline"] = True
    return Calibrated(spec["index"], rule_id, keys, comments)


def _conservation(spec: dict, measured: dict, runs: dict, models: dict, margin: float, bound: str):
    """The conservation keys (leaks, strict, xfail, max_error) and comment lines; None: conservation left out."""
    comments = []
    modes = {path: m["mode"] for path, m in measured.items()}
    failing = {path: m for path, m in measured.items() if m["mode"] == "fails"}
    if failing:
        path, m = next(iter(failing.items()))
        return None, [
            f"# conservation left out: it fails on {models[path]} whatever is declared: {_one_line(m['problem'])}"
        ]
    keys: dict[str, Any] = {}
    ceilings = [m["ceiling"] for m in measured.values()]
    peak = max((m["max_relative_error"] for m in measured.values()), default=0.0)
    has_mechanisms = accounts_leaks(spec["analyzer"])
    found = [name for m in measured.values() for name in m["found"]]
    leaks = list(dict.fromkeys(found))
    recognised = [
        path for path, mode in modes.items() if mode == "xfail" and runs.get(path) and runs[path].get("formula_leak")
    ]
    if "xfail" in modes.values() and not spec["xfail"] and len(recognised) == list(modes.values()).count("xfail"):
        # pytest-lrp itself tells the formula's gap (an expected failure) from a divergence (a failure);
        # an xfail marker here would excuse the divergence too.
        comments.append(
            f"# not conserved, by its formula ({_one_line(runs[recognised[0]]['message'])}); no xfail written: "
            "pytest-lrp recognises the gap, and a divergence from the formula still fails"
        )
    elif "xfail" in modes.values() or (leaks and not has_mechanisms):
        strict = all(mode == "xfail" for mode in modes.values())
        reason = (
            spec["xfail"]["reason"]
            if spec["xfail"]
            else (
                f"not conserved on {', '.join(models[p] for p, mode in modes.items() if mode == 'xfail')} "
                f"(max relative error {peak:.4g}), and {spec['analyzer']} has no leak mechanisms to declare"
            )
        )
        keys["xfail"] = {"reason": reason, "strict": strict}
        comments.append(
            f"# expected failure{' (strict: it failed on the model)' if strict else ''}; "
            "no split by mechanism to declare" + ("" if spec["xfail"] else " (calibrated)")
        )
    elif leaks:
        keys["leaks"] = [name for name in LEAK_MECHANISMS if name in leaks]
        appeared = all(m["appeared"] for m in measured.values())
        details = []
        for m in measured.values():
            for name, b in m["beyond"].items():
                if name in leaks:
                    details.append(
                        f"{name} {b['value']:+.3g} on sample {b['sample']} (tolerance {b['bound']:.3g}, "
                        f"{b['samples']} of {m['samples']} samples beyond)"
                    )
        comments.append(f"# leaks beyond the tolerance ({bound}): " + "; ".join(details))
        if appeared:
            keys["strict"] = True
            comments.append("# strict: the declared leak appeared on the model; a change that removes it fails")
    elif spec["xfail"]:
        comments.append("# conserves here: the configured expected failure is dropped")
    if (keys or recognised) and all(c is not None for c in ceilings):
        keys["max_error"] = max(ceilings)
        comments.append(
            f"# max_error = {margin:g} x the measured max relative error {peak:.4g} + rtol {spec['tolerance']['rtol']:g}, "
            f"rounded up: {keys['max_error']:g}"
        )
    return keys, comments


def _not_run(rules_path: str, by_rule: dict) -> list:
    """A comment naming the suite's rules none of whose tests ran (deselected with -k or -m)."""
    try:
        ids = [rule.id for rule in load_rule_file(Path(rules_path)).rules]
    except LrpUsageError:
        return []
    missing = [rule_id for rule_id in ids if rule_id not in by_rule]
    if not missing:
        return []
    return [f"  # left out, as none of their tests ran in the calibration run (deselected): {', '.join(missing)}"]


def _measured_line(m: dict, bound: str) -> str:
    if not m["finite"]:
        return "heatmap not finite (NaN or Inf)"
    peak = m["max_relative_error"]
    text = f"max relative error {_percent(peak)} (sample {m['max_relative_sample']})"
    if m["mode"] == "conserves":
        return text + f"; conserves within {bound}"
    text += f"; {m['failing']} of {m['samples']} samples outside {bound}"
    if m["split"]:
        text += f"; leak of the worst sample (sample {m['worst_sample']}) by mechanism: {m['split']}"
    return text


def _percent(value) -> str:
    if value is None or not math.isfinite(value):
        return str(value)
    return f"{value:.2%}" if value >= 1e-4 else f"{value:.3g}"


def _tolerance_key(keys: dict, name: str, value: dict, default: Tolerance) -> None:
    if (value["rtol"], value["atol"]) != (default.rtol, default.atol):
        keys[name] = {k: value[k] for k in ("rtol", "atol") if value[k] != getattr(default, k)}


def _header(source: str, models: list, samples: int, inputs, margin: float) -> list:
    from ..base.tf_runtime import distribution_version, tensorflow_release

    versions = f"innvestigate {distribution_version('innvestigate')}, tensorflow {tensorflow_release()}, keras {distribution_version('keras')}"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    of = f"the first {samples} inputs of {inputs}" if inputs else f"{samples} seeded random inputs"
    return [
        f"# Calibrated by pytest-lrp (--lrp-calibrate) on {', '.join(models)} with {of},",
        f"# from {source}; {versions}; {when}.",
        "# Every rule passes on that model and those inputs; the comment above it says what was measured.",
        "# - leaks: the mechanisms (numpy reference's split) whose loss exceeded the tolerance on some sample;",
        "#   strict where the leak appeared, so that a change that removes it fails as well.",
        f"# - max_error: {margin:g} x the measured max relative error + the rule's rtol (an explosion fails).",
        "# - checks: the configured checks that held; one that failed is left out, with a comment.",
        "# - baseline: golden heatmaps written by the calibration run (lrp_baselines/<model>/<rule id>.npz",
        "#   beside this file, unless lrp_baselines says elsewhere): other weights, inputs or heatmaps fail.",
        "#   After an intended change: pytest --lrp-rules=THIS_FILE --lrp-update-baselines, or calibrate anew.",
    ]


def _relative(path, folder: Path) -> str:
    try:
        return Path(os.path.relpath(path, folder)).as_posix()
    except ValueError:  # another drive on Windows
        return Path(path).as_posix()


def _flow(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, sort_keys=False).rstrip("\n")
    return text[: -len("\n...")] if text.endswith("\n...") else text


def _one_line(text) -> str:
    return " ".join(str(text or "").split())[:300]
