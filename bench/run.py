"""pytest-lrp's performance goals (issue 5), measured in one command.

    python bench/run.py                          # everything, about 25 minutes on 2 cores
    python bench/run.py --skip vgg16 vgg16_all   # about 5 minutes
    python bench/run.py --only vgg16_all --update   # one section, keeping the others' results
    python bench/run.py --only reference --against v0.1.0   # the reference's cost against a git revision
    # sections: suite, xdist, flat, startup, vgg16 (4 rules, 1 and 2 samples), vgg16_all (21 rules),
    # deep_side_by_side, deep_suites (bench/deep.py: deep networks, with and without the speed-up)

Every measurement runs as a subprocess of this script (pytest start-up included),
timed by wall clock; peak memory is the child's ``ru_maxrss`` from ``os.wait4`` (for
pytest-xdist, the largest single process). Per-test times come from ``--junitxml``.
The table is printed and written to ``bench/results/results.json``. Nothing here is a
test: ratios are reported against the goals, never asserted.

Two sections compare this tree with the project at another git revision, ``--against REV``
(a `git archive` copy of REV on PYTHONPATH, alternated with this tree): reference (the
example suite before the numpy reference ran inside analyses) and vgg16_all (VGG16's 21
rules before a speed-up). Without ``--against`` they measure this tree alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import deep
import yaml
from common import RESULTS, ROOT, archive, junit, pytest_cmd, resolve, run, write_yaml

SECTIONS = ("suite", "xdist", "flat", "startup", "reference", "vgg16", "vgg16_all", "deep_side_by_side", "deep_suites")
COMPARED = ("reference", "vgg16_all")  # the sections that take --against REV
REFERENCE_REPEATS = 2
# How VGG16's cost grows with samples is measured on four rule families (LRP, alpha-beta,
# Deep Taylor, a composite preset); all 21 rules run once, with one sample (vgg16_all).
VGG16_RULES = ("z", "alpha2-beta1", "deep-taylor-bounded", "preset-a")
VGG16_SAMPLES = (1, 2)
VGG16_ALL_REPEATS = 1
FLAT_RULES = 20
STARTUP_REPEATS = 7
XDIST_REPEATS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    parser.add_argument("--only", nargs="*", default=None, choices=SECTIONS)
    parser.add_argument("--out", default=str(RESULTS / "results.json"))
    parser.add_argument("--update", action="store_true", help="keep the other sections of an existing --out file")
    parser.add_argument(
        "--against",
        metavar="REV",
        help=f"sections {', '.join(COMPARED)}: also run the project at this git "
        "revision (a commit, tag or branch), alternated with this tree",
    )
    args = parser.parse_args()
    try:
        against = resolve(args.against) if args.against else None
    except ValueError as error:
        parser.error(f"--against: {error}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
    results = json.loads(Path(args.out).read_text()) if args.update and Path(args.out).exists() else {}
    results["machine"] = machine()
    started = time.perf_counter()
    for section in SECTIONS:
        if section in args.skip or (args.only is not None and section not in args.only):
            continue
        load = os.getloadavg()[0]  # the machine is shared: say how busy it was
        print(f"== {section} (load average {load:.2f})", flush=True)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        extra = {"against": against} if section in COMPARED else {}
        results[section] = {"started": when, "load_average_before": load, **globals()[section](env, **extra)}
    results["bench_seconds"] = round(time.perf_counter() - started, 1)  # of this invocation
    results["goals"] = goals(results)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print()
    print(table(results))
    print(f"\nwritten to {args.out} ({results['bench_seconds']:.0f} s)")


# ---------------------------------------------------------------- measuring


# (run, pytest_cmd, junit, archive, write_yaml: bench/common.py)


# ---------------------------------------------------------------- sections


def suite(env: dict) -> dict:
    """The default suite: the bug report's one-graph script against pytest-lrp."""
    plain = run([sys.executable, "bench/plain_script.py", "--json", RESULTS / "plain.json"], env)
    plain["per_rule"] = json.loads((RESULTS / "plain.json").read_text())["rules"] if plain["exit"] == 0 else []
    lrp = run(pytest_cmd("rules.yaml", f"--junitxml={RESULTS / 'suite.xml'}"), env)
    lrp["tests"] = junit(RESULTS / "suite.xml")
    return {"plain_script": plain, "pytest_lrp": lrp, "ratio": round(lrp["seconds"] / plain["seconds"], 3)}


def xdist(env: dict) -> dict:
    """``-n 2`` against ``-n 0`` on the default suite: same outcomes, speed-up.

    Alternated and repeated; the fastest run of each counts, since other work on a shared
    machine only ever slows a run down, and it slows ``-n 2`` most (it needs both cores).
    """
    result = {"n0": {"runs": []}, "n2": {"runs": []}}
    outcomes = []
    for _ in range(XDIST_REPEATS):
        for workers in (0, 2):
            xml = RESULTS / f"xdist{workers}.xml"
            r = run(pytest_cmd("rules.yaml", "-n", workers, f"--junitxml={xml}"), env)
            outcomes.append({name: outcome for name, _, outcome in junit(xml)})
            result[f"n{workers}"]["runs"].append(r)
    for key in ("n0", "n2"):
        fastest = min(result[key]["runs"], key=lambda r: r["seconds"])
        result[key].update(seconds=fastest["seconds"], peak_rss_mb=fastest["peak_rss_mb"])
    result["outcomes"] = outcomes[0]
    result["same_outcomes"] = all(o == outcomes[0] for o in outcomes)
    result["speedup"] = round(result["n0"]["seconds"] / result["n2"]["seconds"], 2)
    return result


def flat(env: dict) -> dict:
    """20 rules of equal cost (alpha-beta, alpha = 2 + i/64: exact, so alpha - beta = 1 holds) against 1: per-rule time and peak memory."""
    base = yaml.safe_load((ROOT / "rules.yaml").read_text())["defaults"]
    defaults = {
        **base,
        "models": [str(ROOT / m) for m in base["models"]],
        "inputs": str(ROOT / base["inputs"]),
        "tolerance": {"rtol": 1.0e6},
    }  # the numbers are not the point here; every test passes
    rules = [
        {"id": f"alpha{i:02d}", "analyzer": "lrp.alpha_beta", "params": {"alpha": 2 + i / 64, "beta": 1 + i / 64}}
        for i in range(FLAT_RULES)
    ]
    result = {}
    for n in (1, FLAT_RULES):
        path = write_yaml(RESULTS / f"flat{n}.yaml", {"defaults": defaults, "rules": rules[:n]})
        r = run(pytest_cmd(path, f"--junitxml={RESULTS / f'flat{n}.xml'}"), env)
        # one test per check; a rule costs what its tests cost together
        r["per_rule"] = per_rule(junit(RESULTS / f"flat{n}.xml"))
        result[f"rules{n}"] = r
    seconds = [s for _, s in result[f"rules{FLAT_RULES}"]["per_rule"]]
    result["first5_median"] = round(statistics.median(seconds[:5]), 3)
    result["last5_max"] = round(max(seconds[-5:]), 3)
    result["time_ratio"] = round(result["last5_max"] / result["first5_median"], 3)
    result["memory_ratio"] = round(result[f"rules{FLAT_RULES}"]["peak_rss_mb"] / result["rules1"]["peak_rss_mb"], 3)
    return result


def per_rule(tests: list) -> list:
    """[(rule id, seconds)] summing the tests of one rule (``check[model-rule]``), in run order."""
    totals = {}
    for name, seconds, _ in tests:
        rule = name.split("[", 1)[1].rstrip("]").split("-", 1)[1] if "[" in name else name
        totals[rule] = totals.get(rule, 0.0) + seconds
    return [(rule, round(s, 3)) for rule, s in totals.items()]


def startup(env: dict) -> dict:
    """pytest start-up with the plugin and without (-p no:lrp), in a folder without LRP tests."""
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "test_plain.py").write_text("def test_plain():\n    pass\n")
        Path(folder, "pytest.ini").write_text("[pytest]\n")
        times = {"with_plugin": [], "no_lrp": []}
        for _ in range(STARTUP_REPEATS):  # interleaved, so load changes hit both alike
            times["with_plugin"].append(run(pytest_cmd("test_plain.py"), env, cwd=Path(folder))["seconds"])
            times["no_lrp"].append(run(pytest_cmd("-p", "no:lrp", "test_plain.py"), env, cwd=Path(folder))["seconds"])
        probe = "import sys, pytest_lrp.plugin; print(sorted(m for m in ('numpy', 'yaml', 'tensorflow') if m in sys.modules))"
        heavy = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout.strip()
    with_plugin, without = statistics.median(times["with_plugin"]), statistics.median(times["no_lrp"])
    return {
        "runs": times,
        "median_with_plugin": with_plugin,
        "median_no_lrp": without,
        "difference_s": round(with_plugin - without, 3),
        "ratio": round(with_plugin / without, 3),
        "heavy_modules_imported_by_plugin": heavy,
    }


def reference(env: dict, against: str | None = None) -> dict:
    """The example suite with the numpy reference (leak accounting in every LRP analysis, the
    reference check on 20 rules) against the suite at ``against``, a revision before the reference
    (its rules.yaml, xfails and all); alternated, fastest of each. Both run from `git archive` copies
    (HEAD and ``against``), not from the working tree, on the example digits without `y` (class labels
    there, which newer inputs.py would read as recorded outputs), so that only the reference differs.
    Without ``against``, HEAD alone."""
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        trees = {"with_reference": Path(folder, "head")}
        if against:
            trees = {"before": Path(folder, "before"), **trees}
        for name, tree in trees.items():
            archive(against if name == "before" else "HEAD", tree)
        digits = Path(folder, "digits.npz")
        np.savez(digits, x=np.load(ROOT / "examples" / "digits.npz")["x"])
        report = RESULTS / "reference_report.json"
        runs = {name: [] for name in trees}
        for _ in range(REFERENCE_REPEATS):
            for name, tree in trees.items():
                extra = [f"--lrp-report={report}"] if name == "with_reference" else []
                # PYTHONPATH: that tree's pytest_lrp before the installed one
                runs[name].append(
                    run(
                        pytest_cmd("rules.yaml", f"--lrp-inputs={digits}", *extra),
                        dict(env, PYTHONPATH=str(tree)),
                        cwd=tree,
                    )
                )
    fastest = {name: min(r["seconds"] for r in values) for name, values in runs.items()}
    records = json.loads(report.read_text())["results"]
    seconds = sum((r.get("reference") or {}).get("seconds", 0) for r in records)
    result = {
        "runs": runs,
        "with_reference_s": fastest["with_reference"],
        "reference_seconds_in_reference_tests": round(seconds, 2),
    }
    if against:
        result.update(
            against=against, before_s=fastest["before"], ratio=round(fastest["with_reference"] / fastest["before"], 3)
        )
    return result


def vgg16(env: dict) -> dict:
    """keras.applications.VGG16(weights=None) at 224x224: 1 rule and 4 rules, with 1 and 2 samples."""
    rules = vgg16_rules(VGG16_RULES)
    result = {"model": "VGG16, 138.4M parameters, softmax stripped by the plugin", "rules": list(VGG16_RULES)}
    for samples, chosen in [(1, rules[:1])] + [(s, rules) for s in VGG16_SAMPLES]:
        result[f"rules{len(chosen)}_samples{samples}"] = vgg16_run(env, chosen, samples)
    return result


def vgg16_all(env: dict, against: str | None = None) -> dict:
    """VGG16 through every rule of the default suite, one sample: this tree, and with ``against`` the project at
    that revision (a `git archive` copy) alternated with it; the fastest run of each (CPU seconds and per-rule
    seconds are that run's)."""
    rules = vgg16_rules(None)
    result = {"model": "VGG16, 138.4M parameters, softmax stripped by the plugin", "rules": [r["id"] for r in rules]}
    now, before = f"rules{len(rules)}_samples1", f"rules{len(rules)}_samples1_at_{against}"
    runs = {now: [], before: []} if against else {now: []}
    with tempfile.TemporaryDirectory() as folder:
        tree = archive(against, Path(folder, "before")) if against else None
        for _ in range(VGG16_ALL_REPEATS):
            if tree is not None:
                runs[before].append(vgg16_run(dict(env, PYTHONPATH=str(tree)), rules, 1, cwd=tree, tag="before"))
            runs[now].append(vgg16_run(env, rules, 1))
    for key, found in runs.items():
        result[key] = min(found, key=lambda r: r["seconds"])
        result[f"{key}_all_runs"] = [
            {k: r[k] for k in ("seconds", "cpu_seconds", "peak_rss_mb", "exit")} for r in found
        ]
    if against:
        result["against"] = against
        result["ratio_seconds"] = round(result[now]["seconds"] / result[before]["seconds"], 3)
        result["ratio_cpu_seconds"] = round(result[now]["cpu_seconds"] / result[before]["cpu_seconds"], 3)
    return result


def vgg16_rules(ids) -> list:
    """Rules of rules.yaml (all when ``ids`` is None) with the default checks and no expectations:
    this measures cost, and the example model's xfails and ceilings say nothing about VGG16."""
    suite_rules = yaml.safe_load((ROOT / "rules.yaml").read_text())["rules"]
    by_id = {r["id"]: r for r in suite_rules}
    chosen = suite_rules if ids is None else [by_id[i] for i in ids]
    return [{k: v for k, v in r.items() if k not in ("xfail", "checks", "max_error")} for r in chosen]


def vgg16_run(env: dict, rules: list, samples: int, cwd: Path = ROOT, tag: str = "") -> dict:
    model = RESULTS / "vgg16.h5"
    if not model.exists():
        build = (
            "import tensorflow as tf; m = tf.keras.applications.VGG16(weights=None, input_shape=(224, 224, 3)); "
            f"m.save({str(model)!r}, include_optimizer=False); print(m.count_params())"
        )
        subprocess.run([sys.executable, "-c", build], env=env, check=True, capture_output=True)
    defaults = {"models": [str(model)], "samples": samples, "seed": 0, "tolerance": {"rtol": 1.0e6}}
    stem = f"vgg16_{len(rules)}r_{samples}s{'_' + tag if tag else ''}"
    path = write_yaml(RESULTS / f"{stem}.yaml", {"defaults": defaults, "rules": rules})
    xml = RESULTS / f"{stem}.xml"
    xml.unlink(missing_ok=True)
    r = run(pytest_cmd(path, f"--junitxml={xml}"), env, cwd=cwd)
    tests = junit(xml) if xml.exists() else []
    r["per_rule"] = per_rule(tests)
    r["outcomes"] = sorted({outcome for _, _, outcome in tests})
    return r


def deep_side_by_side(env: dict) -> dict:
    """MobileNetV2, six rules: pytest-lrp against innvestigate run directly (bench/deep.py)."""
    return deep.deep_side_by_side(env)


def deep_suites(env: dict) -> dict:
    """The default suite on deep networks, with and without the speed-up (bench/deep.py)."""
    return deep.deep_suites(env, without=True)


# ---------------------------------------------------------------- report


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    versions = {}
    for dist in ("pytest", "pytest-xdist", "tensorflow", "innvestigate", "numpy"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:
            versions[dist] = None
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "versions": versions,
    }


def goals(r: dict) -> dict:
    g = {}
    if "suite" in r:
        g["suite <= 0.5 x plain script"] = (r["suite"]["ratio"], r["suite"]["ratio"] <= 0.5)
    if "flat" in r:
        g["last-5 max <= 1.3 x first-5 median"] = (r["flat"]["time_ratio"], r["flat"]["time_ratio"] <= 1.3)
        g["peak memory 20 rules <= 1.3 x 1 rule"] = (r["flat"]["memory_ratio"], r["flat"]["memory_ratio"] <= 1.3)
    if "startup" in r:
        s = r["startup"]
        g["start-up within 5% and 50 ms of -p no:lrp"] = (s["ratio"], s["ratio"] <= 1.05 and s["difference_s"] <= 0.05)
    if "reference" in r and "ratio" in r["reference"]:
        g["example suite with the reference <= 1.5 x before it"] = (
            r["reference"]["ratio"],
            r["reference"]["ratio"] <= 1.5,
        )
    if "xdist" in r:
        x = r["xdist"]
        g["-n 2 same outcomes and >= 1.5 x faster"] = (x["speedup"], x["same_outcomes"] and x["speedup"] >= 1.5)
    return {name: {"value": value, "met": met} for name, (value, met) in g.items()}


def table(r: dict) -> str:
    rows = [("measurement", "seconds", "peak RSS MB", "note")]
    if "suite" in r:
        s = r["suite"]
        rows.append(
            (
                "plain script, one graph (bug report's way)",
                s["plain_script"]["seconds"],
                s["plain_script"]["peak_rss_mb"],
                "21 rules",
            )
        )
        rows.append(
            (
                "pytest rules.yaml",
                s["pytest_lrp"]["seconds"],
                s["pytest_lrp"]["peak_rss_mb"],
                f"{s['ratio']:.2f} x plain",
            )
        )
    if "xdist" in r:
        x = r["xdist"]
        rows.append(("pytest rules.yaml -n 0 (fastest of 2)", x["n0"]["seconds"], x["n0"]["peak_rss_mb"], ""))
        rows.append(
            (
                "pytest rules.yaml -n 2 (fastest of 2)",
                x["n2"]["seconds"],
                x["n2"]["peak_rss_mb"],
                f"{x['speedup']:.2f} x faster, same outcomes: {x['same_outcomes']}",
            )
        )
    if "flat" in r:
        f = r["flat"]
        rows.append(("1 alpha-beta rule", f["rules1"]["seconds"], f["rules1"]["peak_rss_mb"], ""))
        rows.append(
            (
                f"{FLAT_RULES} alpha-beta rules",
                f[f"rules{FLAT_RULES}"]["seconds"],
                f[f"rules{FLAT_RULES}"]["peak_rss_mb"],
                f"last-5 max {f['last5_max']:.2f} s / first-5 median {f['first5_median']:.2f} s = {f['time_ratio']:.2f}; "
                f"memory {f['memory_ratio']:.2f} x",
            )
        )
    if "startup" in r:
        s = r["startup"]
        rows.append(("start-up, no LRP test, -p no:lrp (median)", s["median_no_lrp"], "", ""))
        rows.append(
            (
                "start-up, no LRP test, plugin on (median)",
                s["median_with_plugin"],
                "",
                f"+{s['difference_s'] * 1000:.0f} ms ({s['ratio']:.3f} x); plugin imports {s['heavy_modules_imported_by_plugin']}",
            )
        )
    if "reference" in r:
        f = r["reference"]
        if "before_s" in f:
            rows.append(
                (
                    f"pytest rules.yaml at {f.get('against', 'the revision before')}, before the reference "
                    f"(fastest of {REFERENCE_REPEATS})",
                    f["before_s"],
                    "",
                    "",
                )
            )
        ratio = f"{f['ratio']:.2f} x; " if "ratio" in f else ""
        rows.append(
            (
                "pytest rules.yaml with the reference",
                f["with_reference_s"],
                "",
                f"{ratio}reference time in the reference tests {f['reference_seconds_in_reference_tests']} s",
            )
        )
    for v in (r[k] for k in ("vgg16", "vgg16_all") if k in r):
        for key, value in v.items():
            if isinstance(value, dict):
                per = ", ".join(f"{rule} {s:.0f}" for rule, s in value["per_rule"])
                rows.append(
                    (
                        f"VGG16 {key.replace('_', ', ', 1)}",
                        value["seconds"],
                        value["peak_rss_mb"],
                        (f"CPU s {value['cpu_seconds']}; " if value.get("cpu_seconds") else "") + f"per rule s: {per}",
                    )
                )
    if "deep_side_by_side" in r:
        for rule, row in r["deep_side_by_side"]["per_rule"].items():
            rows.append(
                (
                    f"MobileNetV2 {rule}: pytest-lrp / innvestigate directly",
                    row.get("pytest_lrp_s"),
                    "",
                    f"{row.get('direct_s')} s directly; CPU s {row.get('pytest_lrp_cpu_s')} vs {row.get('direct_cpu_s')}; "
                    f"ratio wall {row.get('ratio')}, CPU {row.get('cpu_ratio')}; bitwise identical: {row.get('bitwise_identical')}",
                )
            )
    for name, network in r.get("deep_suites", {}).items():
        for key in ("with_speedup", "without_speedup"):
            if key in network:
                rows.append(
                    (
                        f"{name}, 21 rules, {key.replace('_', ' ')}",
                        network[key]["seconds"],
                        network[key]["peak_rss_mb"],
                        ", ".join(
                            f"{o} {sum(1 for t in network[key]['tests'] if t[2] == o)}"
                            for o in ("passed", "failed", "xfailed", "error")
                        ),
                    )
                )
    widths = [max(len(str(row[i])) for row in rows) for i in range(3)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row[:3], widths)) + " | " + row[3] for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    for name, goal in r.get("goals", {}).items():
        lines.append(f"{'MET ' if goal['met'] else 'NOT MET'} {name}: {goal['value']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
