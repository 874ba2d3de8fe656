"""Render the performance pages' tables from bench/'s result files.

Used as an MkDocs hook (``hooks:`` in mkdocs.yml): a line ``<!-- bench: NAME -->`` in a page
is replaced by the Markdown that ``TABLES[NAME]`` renders from ``bench/last_run*.json``, so
the figures on the site are always those of the committed result files, never pasted by hand.
An unknown name, a missing file or a missing section fails the build.

Run it as a script to print every table (or some of them) without building the site:

    python docs/hooks/bench_tables.py [NAME ...]

The result files also carry the bench's bookkeeping (when a section ran, the machine's load,
the revision measured); none of it is rendered, only the figures and the machine kind.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
MARKER = re.compile(r"^<!-- bench: ([a-z_]+) -->$", re.MULTILINE)
# The machine kind to name for result files that do not record their machine (all of bench/'s
# files were taken on the same kind of machine as bench/last_run.json, which records it).
MACHINE_KIND = "2-core x86_64, 24 GiB"


def _load(name: str) -> dict:
    path = BENCH / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: bench result file missing (docs/hooks/bench_tables.py renders it)")
    return json.loads(path.read_text())


def _table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value, digits: int = 3) -> str:
    """A figure with ``digits`` significant digits (never in exponent form for the sizes here)."""
    if value is None:
        return ""
    value = float(value)
    if value == 0:
        return "0"
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:.0f}"
    text = f"{value:.{digits}g}"
    if "e" in text:
        text = f"{value:.{max(0, digits - 1)}e}"
    return text


def _gb(megabytes) -> str:
    return f"{megabytes / 1000:.2f} GB"


def _outcomes(tail: list) -> str:
    """pytest's last line without its time: '105 passed, 1 xfailed'."""
    last = tail[-1].strip("= ") if tail else ""
    last = re.sub(r" in [0-9.]+s.*$", "", last)
    return re.sub(r", [0-9]+ warnings?", "", last)


def machine() -> str:
    recorded = _load("last_run.json")["machine"]
    versions = recorded.get("versions", {})
    software = ", ".join(f"{name} {version}" for name, version in versions.items())
    return (
        f"**Machine**: {recorded['nproc']} cores ({recorded['cpu']}), {recorded['ram_gb']:g} GB of memory, "
        f"Python {recorded['python']}; {software} (as `bench/last_run.json` records it; the other result "
        f"files were taken on the same kind of machine, {MACHINE_KIND}). Times are wall seconds of a whole "
        "subprocess, pytest's start-up included, and CPU seconds where shown; memory is the process's peak RSS."
    )


def example_suite() -> str:
    reference = _load("last_run.json")["reference"]
    rows = []
    for label, key in (
        ("the example suite (`pytest rules.yaml`)", "with_reference"),
        ("the suite before the numpy reference (no leak accounting or `reference` check)", "before"),
    ):
        runs = reference["runs"][key]
        fastest = min(runs, key=lambda run: run["seconds"])
        rows.append(
            [
                label,
                _outcomes(fastest["tail"]),
                _num(fastest["seconds"]),
                _num(fastest.get("cpu_seconds")),
                _gb(max(run["peak_rss_mb"] for run in runs)),
                len(runs),
            ]
        )
    return _table(["run", "outcomes", "wall s (fastest)", "CPU s", "peak RSS", "runs"], rows)


def goals() -> str:
    recorded = _load("last_run.json")
    suite, xdist, flat, startup = (recorded[k] for k in ("suite", "xdist", "flat", "startup"))
    rows = [
        [
            "the bug report's way: every rule in one graph (`bench/plain_script.py`)",
            _num(suite["plain_script"]["seconds"]),
            _gb(suite["plain_script"]["peak_rss_mb"]),
            f"{len(suite['plain_script']['per_rule'])} rules",
        ],
        [
            "`pytest rules.yaml`",
            _num(suite["pytest_lrp"]["seconds"]),
            _gb(suite["pytest_lrp"]["peak_rss_mb"]),
            f"{len(suite['pytest_lrp']['tests'])} tests; {_num(suite['ratio'], 2)} x the plain script",
        ],
        ["`pytest rules.yaml -n 0` (fastest)", _num(xdist["n0"]["seconds"]), _gb(xdist["n0"]["peak_rss_mb"]), ""],
        [
            "`pytest rules.yaml -n 2` (fastest)",
            _num(xdist["n2"]["seconds"]),
            _gb(xdist["n2"]["peak_rss_mb"]),
            f"{_num(xdist['speedup'], 3)} x faster; same outcomes: {'yes' if xdist['same_outcomes'] else 'no'}",
        ],
        ["1 alpha-beta rule", _num(flat["rules1"]["seconds"]), _gb(flat["rules1"]["peak_rss_mb"]), ""],
        [
            "20 alpha-beta rules",
            _num(flat["rules20"]["seconds"]),
            _gb(flat["rules20"]["peak_rss_mb"]),
            f"slowest of the last 5 / median of the first 5: {_num(flat['time_ratio'])}; "
            f"memory {_num(flat['memory_ratio'])} x",
        ],
        ["start-up, no LRP test selected, `-p no:lrp` (median)", _num(startup["median_no_lrp"]), "", ""],
        [
            "start-up, no LRP test selected, plugin on (median)",
            _num(startup["median_with_plugin"]),
            "",
            f"{_num(startup['ratio'])} x; "
            f"heavy modules the plugin imports: {startup['heavy_modules_imported_by_plugin']}",
        ],
    ]
    measured = _table(["measurement", "wall s", "peak RSS", "note"], rows)
    goal_rows = [
        [name, _num(goal["value"]), "met" if goal["met"] else "not met"] for name, goal in recorded["goals"].items()
    ]
    return measured + "\n\n" + _table(["goal", "measured", ""], goal_rows)


def _network_label(name: str) -> str:
    return {
        "mobilenetv2": "MobileNetV2",
        "resnet50": "ResNet50",
        "densenet121": "DenseNet121",
        "efficientnetb0": "EfficientNetB0",
        "vgg16": "VGG16",
        "residual_cnn": "residual CNN",
    }.get(name, name)


def _quiet(entry: dict) -> bool:
    return "nothing else running" in entry.get("measured", "") or "quiet" in entry.get("measured", "")


def deep_suites() -> str:
    suites = _load("last_run_architectures.json")["deep_suites"]
    rows = []
    for name, entry in suites.items():
        run = entry["with_speedup"]
        rows.append(
            [
                _network_label(name),
                entry["layers"],
                f"{entry['parameters'] / 1e6:.2f}M",
                len(run["tests"]),
                _outcomes(run["tail"]),
                _num(run["seconds"]),
                _num(run.get("cpu_seconds")),
                _gb(run["peak_rss_mb"]),
                "" if _quiet(entry) else "shared",
            ]
        )
    return _table(
        ["network", "layers", "parameters", "tests", "outcomes", "wall s", "CPU s", "peak RSS", "machine"], rows
    )


def architecture_matrix() -> str:
    suites = _load("last_run_architectures.json")["deep_suites"]
    cells, rules = {}, []
    for name, entry in suites.items():
        for test_id, seconds, outcome in entry["with_speedup"]["tests"]:
            check, rest = test_id.split("[", 1)
            rule = rest.rstrip("]")[len(name) + 1 :]
            if rule not in rules:
                rules.append(rule)
            cell = cells.setdefault((rule, name), {"conservation": "", "others": [], "seconds": 0.0})
            cell["seconds"] += seconds
            if check == "conservation":
                cell["conservation"] = outcome
            elif outcome not in ("passed", "xfailed"):
                cell["others"].append(f"{check} {outcome}")
    rows = []
    for rule in rules:
        row = [f"`{rule}`"]
        for name in suites:
            cell = cells.get((rule, name))
            if cell is None:
                row.append("")
                continue
            text = "; ".join([cell["conservation"]] + cell["others"])
            row.append(f"{text}, {cell['seconds']:.0f} s")
        rows.append(row)
    return _table(["rule"] + [_network_label(n) for n in suites], rows)


def speedup_subset() -> str:
    rows = []
    for name, entry in _load("last_run_architectures.json")["deep_suites"].items():
        subset = entry.get("subset")
        if not subset:
            continue
        with_, without = subset["with_speedup"], subset["without_speedup"]
        rows.append(
            [
                _network_label(name),
                ", ".join(f"`{r}`" for r in subset["rules"]),
                len(with_["tests"]),
                f"{_num(with_['seconds'])} ({_num(with_.get('cpu_seconds'))})",
                f"{_num(without['seconds'])} ({_num(without.get('cpu_seconds'))})",
                f"{_num(subset['speedup'])} x ({_num(subset.get('cpu_speedup'))} x)",
            ]
        )
    return _table(
        [
            "network",
            "rules",
            "tests",
            "with the speed-up: wall s (CPU s)",
            "without: wall s (CPU s)",
            "gain wall (CPU)",
        ],
        rows,
    )


def side_by_side() -> str:
    recorded = _load("last_run_deep.json")
    parts = []
    for key, section in recorded.items():
        if not key.startswith("deep_side_by_side"):
            continue
        rows = []
        for rule, entry in section["per_rule"].items():
            if "cpu_ratio" in entry:
                rows.append(
                    [
                        f"`{rule}`",
                        _num(entry["pytest_lrp_cpu_s"]),
                        f"{_num(entry['direct_cpu_s'])} (build {_num(entry['build_s'])} s wall)",
                        _num(entry["cpu_ratio"], 2),
                        "yes" if entry.get("bitwise_identical") else "no",
                    ]
                )
            else:
                error = (entry.get("error") or entry.get("usual_way_error", "")).split(". ")[0]
                rows.append([f"`{rule}`", _num(entry["pytest_lrp_cpu_s"]), f"cannot run it: `{error}`", "", ""])
        title = section["model"].replace("{'input_shape': ", "").replace("}", "").replace("'classes': ", "classes ")
        parts.append(
            f"**{title}**, {section['samples']} samples:\n\n"
            + _table(
                ["rule", "pytest-lrp CPU s", "innvestigate directly: CPU s", "ratio", "same heatmaps (bitwise)"], rows
            )
        )
    return "\n\n".join(parts)


def reference_vgg16() -> str:
    recorded = _load("last_run_reference_vgg16.json")
    rows = [
        [
            "(forward pass, shared by all rules of a model)",
            _num(recorded["shared_forward"]["reference_cpu_s"]),
            "",
            "",
            "",
        ]
    ]
    total_reference, total_innvestigate = recorded["shared_forward"]["reference_cpu_s"], 0.0
    for row in recorded["rows"]:
        total_reference += row["reference_cpu_s"]
        total_innvestigate += row["innvestigate_cpu_s"]
        rows.append(
            [
                f"`{row['rule']}`",
                _num(row["reference_cpu_s"], 2),
                _num(row["innvestigate_cpu_s"], 3),
                _num(row["reference_cpu_s"] / row["innvestigate_cpu_s"], 2),
                _num(row["rel_diff"], 1),
            ]
        )
    rows.append(
        ["all", _num(total_reference), _num(total_innvestigate), _num(total_reference / total_innvestigate, 2), ""]
    )
    how = "the usual way (no speed-up)" if not recorded.get("speedup") else "with pytest-lrp's speed-up"
    return f"innvestigate run {how}; the process peaked at {recorded['maxrss_gb']:.1f} GB.\n\n" + _table(
        ["rule", "reference CPU s", "innvestigate CPU s", "ratio", "heatmap difference (of the largest value)"], rows
    )


def vgg16_rules() -> str:
    quiet = _load("last_run.json")["vgg16_all_quiet"]
    runs = [value for value in quiet.values() if isinstance(value, dict) and "seconds" in value]
    latest = runs[-1]  # the runs are recorded in the order they ran
    summary = (
        f"{len(latest['per_rule'])} rules, outcomes: {', '.join(latest['outcomes'])}; "
        f"{_num(latest['seconds'])} s wall, "
        f"{_num(latest['cpu_seconds'])} CPU s, peak {_gb(latest['peak_rss_mb'])}."
    )
    rows = [[f"`{rule}`", _num(seconds, 2)] for rule, seconds in latest["per_rule"]]
    return summary + "\n\n" + _table(["rule", "seconds (its tests)"], rows)


def _zoo_machine(recorded: dict) -> str:
    machine = recorded.get("machine", {})
    return (
        f"{machine.get('cpus', '?')} cores ({machine.get('platform', '?')}), {machine.get('memory_gib', '?')} GiB, "
        f"Python {machine.get('python', '?')}"
    )


def false_alarms() -> str:
    recorded = _load("last_run_false_alarms.json")
    zoo = recorded["zoo"]
    rows = []
    for kind, result in zoo["models"].items():
        counts = result["counts"]
        red = sum(counts.get(outcome, 0) for outcome in ("failed", "error", "xpassed-strict"))
        outcome = ", ".join(
            f"{counts[name]} {name}" for name in ("passed", "xfailed", "failed", "error", "skipped") if counts.get(name)
        )
        rows.append(
            [f"`{kind}`", f"{result['accuracy']:.2f}", outcome, red, ", ".join(f"`{n}`" for n in result["red"]) or "-"]
        )
    return f"{zoo['samples']} digits per model; {_zoo_machine(recorded)}.\n\n" + _table(
        ["model", "test accuracy", "outcomes", "false alarms", "red tests"], rows
    )


def faults() -> str:
    recorded = _load("last_run_false_alarms.json")
    matrix = recorded["faults"]
    rows = [
        [
            label,
            len(result["caught_by"]),
            ", ".join(f"`{n}`" for n in result["caught_by"][:6])
            + (f" and {len(result['caught_by']) - 6} more" if len(result["caught_by"]) > 6 else ""),
        ]
        for label, result in matrix["faults"].items()
    ]
    return f"On `{matrix['model']}` (clean: {_outcomes([matrix['clean']])}); {_zoo_machine(recorded)}.\n\n" + _table(
        ["fault injected into innvestigate", "tests that caught it", "which"], rows
    )


def _counts(counts: dict) -> str:
    order = ("passed", "xfailed", "skipped", "failed", "error")
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))


def torch_false_alarms() -> str:
    recorded = _load("last_run_torch_false_alarms.json")["zoo"]
    rows = [
        [kind, _num(entry["accuracy"], 2), len(entry["red"]), _counts(entry["counts"])]
        for kind, entry in recorded["zoo"].items()
    ]
    machine = recorded["machine"]
    return (
        _table(["model", "held-out accuracy", "red tests", "outcomes"], rows)
        + f"\n\n{recorded['samples']} inputs per model; Python {machine['python']}, torch {machine['torch']}, {MACHINE_KIND}."
    )


def torch_torchvision() -> str:
    recorded = _load("last_run_torch_false_alarms.json")["torchvision"]
    rows = [
        [
            name,
            _counts(entry["counts"]),
            ", ".join(n.split("[")[1].rstrip("]").split("-", 1)[1] for n in entry["red"]) or "-",
        ]
        for name, entry in recorded["torchvision"].items()
    ]
    machine = recorded["machine"]
    return (
        _table(["network (weights=None)", "outcomes", "red (rule)"], rows)
        + f"\n\n{recorded['samples']} random inputs of 3x64x64 per network; Python {machine['python']}, torch {machine['torch']}, {MACHINE_KIND}."
    )


def torch_speed() -> str:
    recorded = _load("last_run_torch_speed.json")
    rows = [
        [
            name,
            _num(entry["median_seconds"]["direct"]),
            _num(entry["median_seconds"]["pytest-lrp"]),
            f"{entry['ratio']:.2f} x",
            _num(entry["median_seconds"].get("reference", 0.0)),
            "yes" if entry["same_heatmaps"] else "no",
        ]
        for name, entry in recorded["networks"].items()
    ]
    header = ["network", "zennit directly (s)", "pytest-lrp's analysis (s)", "ratio", "numpy reference (s)"]
    return (
        _table([*header, "same heatmaps"], rows)
        + f"\n\n{recorded['samples']} samples of 3x{recorded['size']}x{recorded['size']}, median of {recorded['rounds']} alternating rounds, CPU; torch {recorded['machine']['torch']}, {MACHINE_KIND}."
    )


def xdist_sizes() -> str:
    recorded = _load("last_run_xdist.json")
    labels = {
        "example": "example suite (small digits CNN, 16 inputs)",
        "larger": "packaged suite, 64x64x3 CNN (32-64-128 filters), 16 inputs",
    }
    rows = [
        [
            labels.get(name, name),
            entry["tests"],
            _num(entry["serial_seconds"]),
            _num(entry["n2_seconds"]),
            f"{entry['speedup']:.2f} x",
            "yes" if entry["same_outcomes"] else "no",
        ]
        for name, entry in recorded["suites"].items()
    ]
    return (
        _table(["suite", "tests", "serial (s)", "-n 2 (s)", "speed-up", "same outcomes"], rows)
        + f"\n\nFastest of 2 alternating runs each; Python {recorded['machine']['python']}, {MACHINE_KIND}."
    )


def three_implementations() -> str:
    recorded = _load("last_run_three_implementations.json")
    rows = [
        [
            row["network"],
            row["rule"],
            f"{row['library']} (`{row['analyzer']}`)",
            f"{row['vs_reference']:.1e}",
            "-" if row["library"] == "innvestigate" else f"{row['vs_innvestigate']:.1e}",
            f"{row['conservation']:.1e}",
        ]
        for row in recorded["rows"]
    ]
    machine = recorded["machine"]
    header = ["network", "rule", "library", "vs its formula (reference)", "vs innvestigate", "conservation error"]
    return (
        _table(header, rows)
        + f"\n\nLargest difference relative to the largest |relevance| of a sample, over {recorded['samples']} inputs; the "
        "conservation error is |sum(R) - f(x)| / |f(x)|, the median over the inputs. innvestigate "
        f"{machine['innvestigate']} (TensorFlow {machine['tensorflow']}), zennit {machine['zennit']}, captum "
        f"{machine['captum']}, torch {machine['torch']}; Python {machine['python']}, {MACHINE_KIND}."
    )


def _transformers_machine(machine: dict) -> str:
    return (
        f"torch {machine['torch']} ({machine['threads']} thread{'s' if machine['threads'] != 1 else ''}), "
        f"transformers {machine['transformers']}, lxt {machine['lxt']}; Python {machine['python']}, {MACHINE_KIND}"
    )


def transformers_speed() -> str:
    recorded = _load("last_run_transformers_speed.json")
    rows, profile_rows = [], []
    for name, entry in recorded["cases"].items():
        config, cpu = entry["config"], entry["median_cpu_seconds"]
        label = f"{name} ({config['hidden']} hidden, {config['layers']} layers, {config['tokens']} tokens)"
        rows.append(
            [
                label,
                _num(cpu["direct"]),
                _num(cpu["pytest-lrp"]),
                f"{entry['cpu_ratio']:.2f} x",
                f"{entry['fastest_cpu_ratio']:.2f} x" if "fastest_cpu_ratio" in entry else "",
                f"{entry['ratio']:.2f} x",
                f"{entry['finite_only_cpu_ratio']:.2f} x",
                f"yes ({entry['heatmap_difference']:.0e})" if entry["same_heatmaps"] else "no",
                _num(entry["memory"]["tensor_mb_left_per_analysis"]) if "memory" in entry else "",
            ]
        )
        share = entry["profile_share_of_direct"]
        profile_rows.append(
            [name]
            + [
                _num(share[key], 2) if key in share else ""
                for key in ("analysis", "analysis, tracker off", "_run", "nodes", "block_table", "leak_account")
            ]
        )
    header = [
        "model",
        "LXT directly (CPU s)",
        "pytest-lrp's analysis (CPU s)",
        "ratio (CPU)",
        "fastest rounds' ratio (CPU)",
        "ratio (wall)",
        "checks [finite] only",
        "same heatmaps",
        "MB of tensors an analysis leaves alive",
    ]
    verdict = "met" if recorded["met"] else "not met"
    return (
        _table(header, rows)
        + f"\n\nTarget: a CPU ratio of at most {recorded['target_ratio']:g} ({verdict}). Where the time goes, CPU seconds "
        "as multiples of LXT directly (`_run`: the patched pass with the tracker's hooks; `nodes`, `block_table`, "
        "`leak_account`: the relevance per module and the leak split read off the tracker):\n\n"
        + _table(
            ["model", "analysis", "analysis, tracker off", "_run", "nodes", "block_table", "leak_account"], profile_rows
        )
        + f"\n\n{recorded['samples']} samples without padding, median of {recorded['rounds']} alternating rounds, CPU, "
        f"{recorded['rule']}; {_transformers_machine(recorded['machine'])}. The MB an analysis leaves alive: the "
        "tensors (no parameters) alive after gc.collect() at the end of a model's rounds less at their start, per "
        "analysis with the tracker (0 without a leak; below 0 where the previous model's tensors were freed)."
    )


def _share(value) -> str:
    return f"{value:+.3f}" if abs(value) >= 5e-4 else ("0" if value == 0 else f"{value:+.0e}")


def transformers_findings() -> str:
    recorded = _load("last_run_transformers_findings.json")
    section = recorded["conservation"]
    rows, half = [], []
    for row in section["rows"]:
        label = f"{row['family']} {row['size']}" + (f" ({row['variant']})" if row.get("variant") else "")
        if row["status"] != "ok":
            rows.append([label, f"`{row['analyzer']}`", row["dtype"], "no map", "", "", "", "", ""])
            continue
        shares = row["mean_leak_share"]
        rows.append(
            [
                label,
                f"`{row['analyzer']}`",
                row["dtype"],
                _num(row["median_relative_error"]),
                _num(row["max_relative_error"]),
                _share(shares["softmax"]),
                _share(shares["bias"]),
                _share(shares["embeddings"]),
                f"{_share(shares['unexplained'])} ({_num(row['max_abs_leak_share']['unexplained'], 2)})"
                + (f", unpatched {_share(shares['unpatched'])}" if shares["unpatched"] else ""),
            ]
        )
        if row["dtype"] == "bfloat16":
            half.append(
                [
                    label,
                    f"`{row['analyzer']}`",
                    _num(row["median_relative_error"] - row["median_minus_float32"]),
                    _num(row["median_relative_error"]),
                    _share(row["median_minus_float32"]),
                    _num(row["heatmap_difference_to_float32"], 2),
                ]
            )
    conservation = _table(
        [
            "model",
            "rule",
            "dtype",
            "median error",
            "largest error",
            "softmax",
            "bias",
            "embeddings",
            "unexplained (largest abs)",
        ],
        rows,
    )
    bfloat16 = _table(
        ["model", "rule", "float32: median error", "bfloat16", "difference", "heatmap difference to float32"], half
    )
    skew = recorded["skew"]
    skew_rows = [
        [
            f"{row['family']} {row['size']}",
            _num(row["initializer_range"]),
            f"`{row['analyzer']}`",
            _num(row["first_token_share"], 2),
            _num(row["uniform_share"], 2),
            ", ".join(_num(v, 2) for v in row["first_token_share_per_block_input"]),
            ", ".join(_share(v) for v in row["block_change_share"]),
        ]
        for row in skew["rows"]
    ]
    skew_table = _table(
        [
            "model",
            "initializer_range",
            "rule",
            "first token's share of sum abs(R)",
            "uniform share",
            "at each block's input, block 0 to the final norm",
            "each block's change of sum R (of the logit)",
        ],
        skew_rows,
    )
    return (
        conservation
        + f"\n\nRelative conservation error abs(sum R - logit) / abs(logit), median and largest over {section['seeds']} "
        f"seeds x {section['samples_per_seed']} samples ({section['tokens']} tokens, right-padded to different lengths; "
        "ViT: 32x32 images, patches of 8); leak mechanisms: the mean of each over the samples, as a share of the logit "
        "(negative: taken from the input's relevance). Random weights: every bias is 0 at transformers' init, "
        "hence the variants with random biases.\n\n**bfloat16 against float32** (same weights and inputs):\n\n"
        + bfloat16
        + "\n\n**The first token's share** (LXT's README: Qwen3's attributions are skewed toward the first token):\n\n"
        + skew_table
        + f"\n\n{skew['verdict']}\n\n{_transformers_machine(recorded['machine'])}."
    )


def transformers_false_alarms() -> str:
    recorded = _load("last_run_transformers_findings.json")
    zoo = recorded["zoo"]
    rows = []
    for name, entry in zoo["models"].items():
        red = "; ".join(f"`{r['test']}`: {r['message']}" for r in entry["red"]) or "-"
        rows.append([f"`{name}`", entry["description"], _counts(entry["counts"]), len(entry["red"]), red])
    return (
        _table(["model", "what it is", "outcomes", "false alarms", "red tests"], rows)
        + f"\n\nThe packaged suite (`pytest --lrp-model=models.py:NAME`, no rules.yaml) on each model; random weights, "
        f"{zoo['false_alarms']} false alarms in all; {_transformers_machine(recorded['machine'])}."
    )


TABLES = {
    "three_implementations": three_implementations,
    "xdist_sizes": xdist_sizes,
    "torch_false_alarms": torch_false_alarms,
    "torch_torchvision": torch_torchvision,
    "torch_speed": torch_speed,
    "false_alarms": false_alarms,
    "faults": faults,
    "machine": machine,
    "example_suite": example_suite,
    "goals": goals,
    "deep_suites": deep_suites,
    "architecture_matrix": architecture_matrix,
    "speedup_subset": speedup_subset,
    "side_by_side": side_by_side,
    "reference_vgg16": reference_vgg16,
    "vgg16_rules": vgg16_rules,
    "transformers_speed": transformers_speed,
    "transformers_findings": transformers_findings,
    "transformers_false_alarms": transformers_false_alarms,
}


def render(markdown: str) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in TABLES:
            raise KeyError(f"<!-- bench: {name} -->: no such table (known: {', '.join(TABLES)})")
        return TABLES[name]()

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown, page, config, files):  # MkDocs hook
    return render(markdown)


if __name__ == "__main__":
    for name in sys.argv[1:] or TABLES:
        print(f"<!-- {name} -->\n{TABLES[name]()}\n")
