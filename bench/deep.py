"""Deep networks (issues 11 and 14): pytest-lrp with and without its speed-up, and innvestigate run directly.

    python bench/run.py --only deep_side_by_side --update        # MobileNetV2, 6 rules, about 25 minutes
    python bench/run.py --only deep_suites --update              # 21 rules per network, with the speed-up
    python bench/deep.py suites --networks vgg16 --without       # one network, also without the speed-up
    python bench/deep.py suites --subset z input-times-gradient  # and those rules alone, with and without it
    python bench/deep.py side_by_side --networks vgg16 --all-rules   # 21 rules against innvestigate directly
    python bench/deep.py matrix --out bench/results/deep_suites.json   # the README's table from a run's results

deep_side_by_side: MobileNetV2 (alpha 0.35, 96x96, weights=None, 10 classes, 2 samples), six rules.
pytest-lrp runs them (hand-written tests that save heatmaps and inputs), then innvestigate runs
them the usual way (bench/innvestigate_direct.py: the file loaded in a graph of its own per rule,
Keras' normal path) on the same inputs. Per rule: both times, the ratio, and whether the heatmaps
are bitwise identical.

deep_suites: the default suite (rules.yaml's 21 rules with their checks, xfails and ceilings, plus
`disable_model_checks: true`, which these networks need for LRP; without the numpy `reference` check,
which is about the example network) on keras.applications networks (weights=None, small inputs) and
a hand-made residual CNN with Keras' default layer names, 2 samples; with the speed-up
and, with --without (PYTEST_LRP_SPEEDUP=0), without it. Per network: time, peak memory, outcome of
every test. One network at a time (memory is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from common import RESULTS, ROOT, junit, pytest_cmd, run, write_yaml

SIDE_BY_SIDE = {  # rules.yaml id -> (analyzer, params)
    "z": ("lrp.z", {}),
    "alpha2-beta1": ("lrp.alpha_2_beta_1", {}),
    "preset-a": ("lrp.sequential_preset_a", {}),
    "deep-taylor": ("deep_taylor", {}),
    "input-times-gradient": ("input_t_gradient", {}),
    "integrated-gradients": ("integrated_gradients", {"steps": 64, "reference_inputs": 0.0}),
}
# name -> (keras.applications class or None for the hand-made one, keyword arguments)
NETWORKS = {
    "mobilenetv2": ("MobileNetV2", {"alpha": 0.35, "input_shape": (96, 96, 3), "classes": 10}),
    "resnet50": ("ResNet50", {"input_shape": (64, 64, 3), "classes": 10}),
    "densenet121": ("DenseNet121", {"input_shape": (64, 64, 3), "classes": 10}),
    "efficientnetb0": ("EfficientNetB0", {"input_shape": (64, 64, 3), "classes": 10}),
    "vgg16": ("VGG16", {"input_shape": (224, 224, 3)}),
    "residual_cnn": (None, {"input_shape": (32, 32, 3), "classes": 10}),
}
SAMPLES = 2
# Wall time on a shared 2-core machine says how busy it was; the process's CPU time (all threads) per test
# is what the work cost, and is what the ratio is reported on as well.
CPU_PER_TEST = """
import json, time
import pytest

times = {{}}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    wall, cpu = time.perf_counter(), time.process_time()
    result = yield
    times[item.name] = {{"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}}
    with open({out!r}, "w") as f:
        json.dump(times, f)
    return result
"""

BUILD = """
import os, sys
import numpy as np
import tensorflow as tf
name, cls, kwargs, path = sys.argv[1], sys.argv[2], eval(sys.argv[3]), sys.argv[4]
if cls == "None":  # Conv-BN-ReLU residual blocks, Add, GlobalAveragePooling2D, Keras' default layer names
    L = tf.keras.layers
    inputs = L.Input(kwargs["input_shape"])
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(inputs)))
    for filters in (16, 16, 32, 32):
        if filters != x.shape[-1]:
            x = L.Conv2D(filters, 1, strides=2)(x)
        y = L.ReLU()(L.BatchNormalization()(L.Conv2D(filters, 3, padding="same")(x)))
        y = L.BatchNormalization()(L.Conv2D(filters, 3, padding="same")(y))
        x = L.ReLU()(L.Add()([x, y]))
    model = tf.keras.Model(inputs, L.Dense(kwargs["classes"], activation="softmax")(L.GlobalAveragePooling2D()(x)))
else:
    model = getattr(tf.keras.applications, cls)(weights=None, **kwargs)
model.save(path, include_optimizer=False)
print(model.count_params(), len(model.layers))
"""


def model_file(name: str, env: dict) -> tuple:
    path = RESULTS / f"{name}.h5"
    info = RESULTS / f"{name}.json"
    if not path.exists() or not info.exists():
        cls, kwargs = NETWORKS[name]
        out = subprocess.run(
            [sys.executable, "-c", BUILD, name, str(cls), repr(kwargs), str(path)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        info.write_text(json.dumps({"parameters": int(out[-2]), "layers": int(out[-1])}))
    return path, json.loads(info.read_text())


def deep_side_by_side(
    env: dict, reuse_direct: bool = False, network: str = "mobilenetv2", rules: dict = SIDE_BY_SIDE
) -> dict:
    path, info = model_file(network, env)
    folder = side_by_side_folder(network)
    folder.mkdir(exist_ok=True)
    import numpy as np

    inputs = folder / "x.npz"
    shape = NETWORKS[network][1]["input_shape"]
    np.savez(inputs, x=np.random.default_rng(0).uniform(0, 1, (SAMPLES, *tuple(shape))).astype(np.float32))
    tests = ["import numpy as np", "import pytest", ""]
    for rule_id, (analyzer, params) in rules.items():
        name = rule_id.replace("-", "_")
        tests += [
            f"@pytest.mark.lrp_rule({analyzer!r}, disable_model_checks=True, **{params!r})",
            f"def test_{name}(lrp_analysis):",
            f"    np.savez({str(folder / ('lrp_' + name + '.npz'))!r}, heatmaps=lrp_analysis.heatmaps, x=lrp_analysis.inputs)",
            "",
        ]
    (folder / "test_side_by_side.py").write_text("\n".join(tests))
    (folder / "conftest.py").write_text(CPU_PER_TEST.format(out=str(folder / "lrp_times.json")))
    xml = folder / "lrp.xml"
    lrp = run(
        pytest_cmd(
            folder / "test_side_by_side.py",
            f"--lrp-model={path}",
            f"--lrp-inputs={inputs}",
            f"--lrp-samples={SAMPLES}",
            f"--junitxml={xml}",
        ),
        env,
    )
    spec = json.dumps({rule_id.replace("-", "_"): [analyzer, params] for rule_id, (analyzer, params) in rules.items()})
    if reuse_direct:  # innvestigate's times from an earlier run on the same inputs (they do not depend on pytest-lrp)
        direct = {"reused": str(folder / "direct.json")}
    else:
        direct = run(
            [sys.executable, str(ROOT / "bench" / "innvestigate_direct.py"), str(path), str(folder), spec], env
        )
    cls, kwargs = NETWORKS[network]
    return {
        "model": f"{cls} {kwargs}, weights=None ({info['layers']} layers, {info['parameters']} parameters)",
        "samples": SAMPLES,
        "pytest_lrp": lrp,
        "direct": direct,
        "per_rule": side_by_side_table(folder, network, rules),
    }


def side_by_side_folder(network: str) -> Path:
    return RESULTS / ("side_by_side" if network == "mobilenetv2" else f"side_by_side_{network}")


def all_rules() -> dict:
    """rules.yaml's rules as SIDE_BY_SIDE: id -> (analyzer, params)."""
    return {
        rule["id"]: (rule["analyzer"], rule.get("params") or {})
        for rule in yaml.safe_load((ROOT / "rules.yaml").read_text())["rules"]
    }


def side_by_side_table(folder: Path, network: str = "mobilenetv2", rules: dict = SIDE_BY_SIDE) -> dict:
    """Per rule: pytest-lrp's and innvestigate's seconds (wall, CPU), their ratios, bitwise identity of the heatmaps."""
    import numpy as np

    lrp_times = json.loads((folder / "lrp_times.json").read_text()) if (folder / "lrp_times.json").exists() else {}
    times = json.loads((folder / "direct.json").read_text()) if (folder / "direct.json").exists() else {}
    per_rule = {}
    for rule_id in rules:
        name = rule_id.replace("-", "_")
        ours = lrp_times.get(f"test_{name}[{network}]", {})
        row = {"pytest_lrp_s": ours.get("wall_s"), "pytest_lrp_cpu_s": ours.get("cpu_s"), **times.get(name, {})}
        if row["pytest_lrp_s"] and row.get("direct_s") and "error" not in row:
            row["ratio"] = round(row["pytest_lrp_s"] / row["direct_s"], 4)
            row["cpu_ratio"] = round(row["pytest_lrp_cpu_s"] / row["direct_cpu_s"], 4)
            mine, theirs = np.load(folder / f"lrp_{name}.npz"), np.load(folder / f"direct_{name}.npz")
            row["bitwise_identical"] = bool(np.array_equal(mine["heatmaps"], theirs["heatmaps"]))
        per_rule[rule_id] = row
    return per_rule


def deep_suites(
    env: dict, networks=tuple(NETWORKS), without: bool = False, subset: tuple = (), whole: bool = True
) -> dict:
    """The whole suite with the speed-up; with ``without`` also without it; with ``subset`` (rule ids) those
    rules alone with and without it, back to back (the whole suite without the speed-up takes over an hour
    on the deeper networks), and with ``whole=False`` only those."""
    result = {}
    off = dict(env, PYTEST_LRP_SPEEDUP="0")
    for name in networks:
        path, info = model_file(name, env)
        result[name] = dict(info) if subset and not whole else {**info, "with_speedup": suite_run(name, path, env)}
        if without and whole:
            result[name]["without_speedup"] = suite_run(name, path, off)
            result[name]["speedup"] = round(
                result[name]["without_speedup"]["seconds"] / result[name]["with_speedup"]["seconds"], 2
            )
        if subset:
            pair = {
                "rules": list(subset),
                "with_speedup": suite_run(name, path, env, subset),
                "without_speedup": suite_run(name, path, off, subset),
            }
            pair["speedup"] = round(pair["without_speedup"]["seconds"] / pair["with_speedup"]["seconds"], 2)
            pair["cpu_speedup"] = round(pair["without_speedup"]["cpu_seconds"] / pair["with_speedup"]["cpu_seconds"], 2)
            result[name]["subset"] = pair
    return result


def suite_rules(only: tuple = ()) -> list:
    rules = []
    for rule in yaml.safe_load((ROOT / "rules.yaml").read_text())["rules"]:
        if only and rule["id"] not in only:
            continue
        rule = dict(rule, params={**(rule.get("params") or {}), "disable_model_checks": True})
        if "checks" in rule:
            rule["checks"] = [c for c in rule["checks"] if c != "reference"]
        rules.append(rule)
    return rules


def suite_run(name: str, path: Path, env: dict, only: tuple = ()) -> dict:
    defaults = dict(yaml.safe_load((ROOT / "rules.yaml").read_text())["defaults"])
    defaults.pop("inputs", None)
    defaults.update(
        models=[str(path)], samples=SAMPLES, seed=0, checks=[c for c in defaults["checks"] if c != "reference"]
    )
    tag = ("with" if env.get("PYTEST_LRP_SPEEDUP", "1") != "0" else "without") + ("_subset" if only else "")
    rules_path = write_yaml(RESULTS / f"suite_{name}_{tag}.yaml", {"defaults": defaults, "rules": suite_rules(only)})
    xml = RESULTS / f"suite_{name}_{tag}.xml"
    r = run(pytest_cmd(rules_path, f"--junitxml={xml}", "-rfEX"), env)
    tests = junit(xml) if xml.exists() else []
    r["tests"] = tests
    r["errors"] = error_lines(xml) if xml.exists() else {}
    return r


def error_lines(xml: Path) -> dict:
    import xml.etree.ElementTree as ET

    lines = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        for child in case:
            if child.tag in ("error", "failure"):
                lines[case.get("name")] = (
                    (child.get("message") or "").splitlines()[0][:400] if child.get("message") else ""
                )
    return lines


def matrix(results: dict) -> str:
    """Markdown: one row per rule, one column per network; each cell the conservation test's outcome, the other
    checks that did not pass, and the seconds of the rule's tests together."""
    suites = results.get("deep_suites", {})
    names = [name for name in NETWORKS if "with_speedup" in suites.get(name, {})]  # not the --subset-only runs
    rule_ids = [rule["id"] for rule in yaml.safe_load((ROOT / "rules.yaml").read_text())["rules"]]
    lines = ["| rule | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for rule_id in rule_ids:
        cells = []
        for name in names:
            tests = [t for t in suites[name]["with_speedup"]["tests"] if t[0].endswith(f"[{name}-{rule_id}]")]
            if not tests:
                cells.append("-")
                continue
            main_test = next((t for t in tests if t[0].startswith("conservation[")), tests[0])
            others = [f"{t[0].split('[')[0]} {t[2]}" for t in tests if t is not main_test and t[2] != "passed"]
            cells.append("; ".join([main_test[2], *others]) + f", {sum(t[1] for t in tests):.0f} s")
        lines.append(f"| `{rule_id}` | " + " | ".join(cells) + " |")
    totals = []
    for name in names:
        run_ = suites[name]["with_speedup"]
        outcomes = [t[2] for t in run_["tests"]]
        counts = ", ".join(
            f"{outcomes.count(o)} {o}" for o in ("passed", "failed", "xfailed", "skipped", "error") if outcomes.count(o)
        )
        totals.append(f"{counts}; {run_['seconds']:.0f} s, {run_['peak_rss_mb'] / 1024:.1f} GB")
    lines.append("| all | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=("side_by_side", "suites", "matrix"))
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--without", action="store_true", help="also run each suite without the speed-up")
    parser.add_argument(
        "--subset",
        nargs="*",
        default=[],
        metavar="RULE",
        help="also run these rules alone, with and without the speed-up, back to back",
    )
    parser.add_argument("--subset-only", action="store_true", help="with --subset: skip the whole suite")
    parser.add_argument("--all-rules", action="store_true", help="side_by_side: every rule of rules.yaml, not the six")
    parser.add_argument(
        "--rules", nargs="*", default=[], metavar="RULE", help="side_by_side: these rules of rules.yaml"
    )
    parser.add_argument(
        "--reuse-direct", action="store_true", help="side_by_side: take innvestigate's times from the last run"
    )
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="side_by_side: recompute the per-rule table from the files of the last run",
    )
    parser.add_argument("--out", default=str(RESULTS / "deep.json"))
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    if args.section == "matrix":
        print(matrix(results))
        return
    if args.section == "side_by_side":
        # MobileNetV2's six rules keep their section; another network (--networks NAME) gets one of its own
        network = args.networks[0] if len(args.networks) == 1 else "mobilenetv2"
        key = "deep_side_by_side" if network == "mobilenetv2" else f"deep_side_by_side_{network}"
        rules = all_rules() if args.all_rules or args.rules else SIDE_BY_SIDE
        if args.rules:
            rules = {rule_id: rules[rule_id] for rule_id in args.rules}
        if args.table_only:
            results[key]["per_rule"] = side_by_side_table(side_by_side_folder(network), network, rules)
        else:
            results[key] = deep_side_by_side(env, args.reuse_direct, network, rules)
    else:
        for name in args.networks:  # written after each network: a long run keeps what it measured
            results.setdefault("deep_suites", {}).setdefault(name, {}).update(
                deep_suites(env, [name], args.without, tuple(args.subset), not args.subset_only)[name]
            )
            out.write_text(json.dumps(results, indent=1) + "\n")
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1)[:4000])


if __name__ == "__main__":
    main()
