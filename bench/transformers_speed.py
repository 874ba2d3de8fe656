"""What pytest-lrp adds to LXT: its analysis of a transformers model against LXT run directly, same model, same inputs.

    USE_TF=0 python bench/transformers_speed.py             # Llama and GPT-2, 3 sizes, CPU, 4 samples, 5 rounds (~75 s)
    USE_TF=0 python bench/transformers_speed.py --update    # also write bench/last_run_transformers_speed.json

Direct is what LXT's README shows: its AttnLRP patches (lxt.efficient.models.<family>.attnLRP, applied by
pytest_lrp.transformer.patching.lxt_patched, which is monkey_patch undone after), the ids embedded, one forward
pass with inputs_embeds and the attention mask, the largest logit of the last token, one backward pass, and the
relevance (embeds * grad).sum(-1). pytest-lrp's is pytest_lrp.transformer.analysis.analyze for a rule with the
conservation check only (no reruns): the same forward and backward pass inside the same patches, plus the
tracker's hooks on every module (relevance per block and module) and the leak split by mechanism read off them.
Rounds alternate the two (and the same analysis for a rule with checks [finite] only) after a warm-up of each,
so that load on a shared machine hits both; the ratio is of the medians, of wall seconds (``ratio``) and of the
process's CPU seconds (``cpu_ratio``, the one judged against the target: less moved by the other processes), and
the ratio of the fastest rounds (``fastest_cpu_ratio``: interference only slows a round). torch
runs on one thread by default (--threads): where the cores are shared, a second thread waits at OpenMP's barriers
for a core and turns a 5 ms pass into 50-500 ms at random. Models are built from small configs with random weights
(seeded; nothing is downloaded), 4 samples without padding.

Where the ratio is above the target (1.2), ``profile`` says where the time goes: CPU seconds of the functions
analysis.py calls (``_run``: the patched pass with the tracker's hooks; ``nodes``, ``block_table``, ``leak_account``:
the relevance per module and the leak split read off the tracker), and of the analysis with the tracker off (its
LXT_RULES emptied), medians of the same rounds. ``code_digest`` names the code measured (uncommitted edits too). ``memory``: the
process's resident memory and the tensors alive (no parameters) after gc.collect(), before and after a case's rounds,
per analysis run: what an analysis leaves alive (0 without a leak).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT

os.environ.setdefault("USE_TF", "0")  # transformers would import TensorFlow, for nothing here

LAST_RUN = ROOT / "bench" / "last_run_transformers_speed.json"
TARGET = 1.2
VOCABULARY = 1000
SIZES = {  # hidden size, layers, heads, tokens
    "small": (64, 2, 4, 32),
    "medium": (256, 4, 4, 64),
    "large": (512, 8, 8, 128),
}
FAMILIES = ("llama", "gpt2")

MODELS = """
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

SIZES = {sizes!r}


def _llama(size):
    hidden, layers, heads, tokens = SIZES[size]
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size={vocabulary}, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2 * tokens,
    ))


def _gpt2(size):
    hidden, layers, heads, tokens = SIZES[size]
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(
        vocab_size={vocabulary}, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=2 * tokens,
    ))

"""


def _models_source() -> str:
    source = MODELS.format(sizes=SIZES, vocabulary=VOCABULARY)
    for family in FAMILIES:
        for size in SIZES:
            source += f"\ndef {family}_{size}():\n    return _{family}({size!r})\n"
    return source


def direct(module, lxt_map: dict, ids, mask):
    """LXT as its README shows: patch, embed, forward, backward from the largest logit of the last token."""
    from pytest_lrp.transformer.patching import lxt_patched

    with lxt_patched(lxt_map):  # what lxt.efficient.monkey_patch applies, undone after
        embeds = module.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = module(inputs_embeds=embeds, attention_mask=mask).logits[:, -1]
        best = logits.max(dim=-1).values
        best.sum().backward()
        return (embeds * embeds.grad).sum(-1).detach()


def _timed(function, *args, **kwargs):
    """(wall seconds, CPU seconds of this process, the function's value)."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = function(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, value


# What analysis.py calls, each timed inside one analysis (a name analysis.py no longer has is left out).
PROFILED = ("_run", "nodes", "block_table", "leak_account", "block_comparison", "extra_runs")


def profile_once(model, rule, x) -> dict:
    """CPU seconds of one analysis's parts (the functions analysis.py calls, wrapped for the call), and of the
    analysis with the tracker off (analysis.py's LXT_RULES emptied: no relevance per module, no leak split)."""
    from pytest_lrp.transformer import analysis as transformer_analysis
    from pytest_lrp.transformer.analysis import analyze

    seconds: dict = {}
    saved = {name: getattr(transformer_analysis, name) for name in PROFILED if hasattr(transformer_analysis, name)}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.process_time() - started

        return wrapper

    try:
        for name, function in saved.items():
            setattr(transformer_analysis, name, timed(name, function))
        _, seconds["analysis"], _ = _timed(analyze, model, rule, x)
    finally:
        for name, function in saved.items():
            setattr(transformer_analysis, name, function)
    rules = transformer_analysis.LXT_RULES
    transformer_analysis.LXT_RULES = ()
    try:
        _, seconds["analysis, tracker off"], _ = _timed(analyze, model, rule, x)
    finally:
        transformer_analysis.LXT_RULES = rules
    return seconds


def _code_digest() -> str:
    """A hash of the code measured (the transformers backend and the tracker; uncommitted edits included)."""
    import hashlib

    digest = hashlib.sha1()
    for path in sorted([*(ROOT / "pytest_lrp" / "transformer").glob("*.py"), ROOT / "pytest_lrp/pytorch/layers.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _rule(folder: Path, checks: str):
    from pytest_lrp.config.rulefile import load_rule_file

    path = folder / f"rules_{checks}.yaml"
    path.write_text(f"rules:\n  - id: attnlrp\n    analyzer: lxt.attnlrp\n    checks: [{checks}]\n")
    return load_rule_file(path).rules[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument(
        "--threads", type=int, default=1, help="torch's threads (1: the 2 cores are shared; 0: torch's default)"
    )
    parser.add_argument("--update", action="store_true")
    args = parser.parse_args()
    import numpy as np
    import torch

    from pytest_lrp.config.model_spec import PythonModel
    from pytest_lrp.pytorch.loading import load_python_model
    from pytest_lrp.transformer.analysis import analyze
    from pytest_lrp.transformer.loading import as_transformer
    from pytest_lrp.transformer.runtime import library

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = [round(v, 2) for v in os.getloadavg()]
    results: dict = {}
    started_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "models.py").write_text(_models_source())
        rule, finite = _rule(folder, "conservation"), _rule(folder, "finite")
        for family in args.families:
            lxt_map = library(f"lxt.efficient.models.{family}").attnLRP
            for size in args.sizes:
                hidden, layers, heads, tokens = SIZES[size]
                name = f"{family}_{size}"
                model = as_transformer(
                    load_python_model(PythonModel(str(folder / "models.py"), name), name, "cpu", (tokens,))
                )
                x = model.load_inputs(None, args.samples, 0)
                x[:, 1] = 1  # no padding: LXT's README explains the last token of the sequence
                ids, mask = torch.as_tensor(x[:, 0]), torch.as_tensor(x[:, 1])
                direct(model.module, lxt_map, ids, mask)  # warm-up, both
                analyze(model, rule, x)
                gc.collect()
                memory = {"rss_mb_at_start": _rss_mb(), "tensor_mb_at_start": _tensor_mb(), "analyses": 0}
                wall: dict = {"direct": [], "pytest-lrp": [], "pytest-lrp, checks [finite]": []}
                cpu: dict = {key: [] for key in wall}
                parts: list = []
                for _ in range(args.rounds):
                    for key, function, arguments in (
                        ("direct", direct, (model.module, lxt_map, ids, mask)),
                        ("pytest-lrp", analyze, (model, rule, x)),
                        ("pytest-lrp, checks [finite]", analyze, (model, finite, x)),
                    ):
                        seconds, cpu_seconds, value = _timed(function, *arguments)
                        wall[key].append(seconds)
                        cpu[key].append(cpu_seconds)
                        if key == "direct":
                            heat = value
                        elif key == "pytest-lrp":
                            analysis = value
                        else:
                            finite_layers = len(value.layers)
                    parts.append(profile_once(model, rule, x))
                    memory["analyses"] += 3  # with the tracker: 2 timed, 1 in the profile (its other keeps none)
                heatmaps, layer_count = analysis.heatmaps, len(analysis.layers)
                conservation_error = float(np.median(analysis.relative_errors))
                del value, analysis
                gc.collect()
                memory["rss_mb_at_end"], memory["tensor_mb_at_end"] = _rss_mb(), _tensor_mb()
                # What stays after gc.collect(), per analysis: what each analysis leaves alive (0 without a leak).
                memory["rss_growth_mb_per_analysis"] = round(
                    (memory["rss_mb_at_end"] - memory["rss_mb_at_start"]) / memory["analyses"], 1
                )
                memory["tensor_mb_left_per_analysis"] = round(
                    (memory["tensor_mb_at_end"] - memory["tensor_mb_at_start"]) / memory["analyses"], 1
                )
                heat = heat.numpy()
                difference = float(np.max(np.abs(heatmaps - heat))) / float(np.max(np.abs(heat)))
                medians = {k: statistics.median(v) for k, v in wall.items()}
                cpu_medians = {k: statistics.median(v) for k, v in cpu.items()}
                profile = {key: statistics.median(p.get(key, 0.0) for p in parts) for key in parts[0]}
                entry = {
                    "family": family,
                    "size": size,
                    "config": {"hidden": hidden, "layers": layers, "heads": heads, "tokens": tokens},
                    "parameters": sum(p.numel() for p in model.module.parameters()),
                    "seconds": {k: [round(t, 4) for t in v] for k, v in wall.items()},
                    "cpu_seconds": {k: [round(t, 4) for t in v] for k, v in cpu.items()},
                    "median_seconds": {k: round(v, 4) for k, v in medians.items()},
                    "median_cpu_seconds": {k: round(v, 4) for k, v in cpu_medians.items()},
                    "ratio": round(medians["pytest-lrp"] / medians["direct"], 3),
                    "cpu_ratio": round(cpu_medians["pytest-lrp"] / cpu_medians["direct"], 3),
                    # the fastest rounds' ratio: what interference from other processes adds only slows a round
                    "fastest_cpu_ratio": round(min(cpu["pytest-lrp"]) / min(cpu["direct"]), 3),
                    "finite_only_cpu_ratio": round(
                        cpu_medians["pytest-lrp, checks [finite]"] / cpu_medians["direct"], 3
                    ),
                    # the tracker runs for every lxt.* rule (analysis.py: keep = analyzer in LXT_RULES)
                    "finite_only_layers": finite_layers,
                    "heatmap_difference": difference,  # max |difference| / max |R| (direct)
                    "same_heatmaps": difference < 1e-5,
                    "median_relative_conservation_error": conservation_error,
                    "layers": layer_count,
                    "memory": memory,
                    # CPU seconds, medians over the rounds; _run holds the patched pass with the tracker's hooks
                    "profile_median_cpu_seconds": {k: round(v, 4) for k, v in profile.items()},
                    "profile_share_of_direct": {k: round(v / cpu_medians["direct"], 3) for k, v in profile.items()},
                }
                results[name] = entry
                above = "" if entry["cpu_ratio"] <= TARGET else ", above the target"
                print(
                    f"{name}: direct {medians['direct']:.3f} s ({cpu_medians['direct']:.3f} CPU s), pytest-lrp "
                    f"{medians['pytest-lrp']:.3f} s ({cpu_medians['pytest-lrp']:.3f} CPU s): ratio {entry['ratio']:.2f} "
                    f"(CPU {entry['cpu_ratio']:.2f}{above}; checks [finite] only: {entry['finite_only_cpu_ratio']:.2f}); "
                    f"heatmaps differ by {difference:.1e} of max |R|; profile (CPU s) "
                    + ", ".join(f"{k} {v}" for k, v in entry["profile_median_cpu_seconds"].items()),
                    flush=True,
                )
    document = {
        "cases": results,
        "samples": args.samples,
        "rounds": args.rounds,
        "target_ratio": TARGET,
        "met": all(entry["cpu_ratio"] <= TARGET for entry in results.values()),
        "rule": "lxt.attnlrp, checks [conservation]",
        "code_digest": _code_digest(),
        "seconds_total": round(time.perf_counter() - started_all, 1),
        "device": "cpu",
        "machine": {
            "load_average_before": load_before,
            **machine_info(),
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "transformers_speed.json").write_text(json.dumps(document, indent=2))
    if args.update:
        LAST_RUN.write_text(json.dumps(document, indent=2) + "\n")


def _rss_mb() -> float:
    """The process's resident memory now (Linux), MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)


def _tensor_mb() -> float:
    """MB of the tensors alive in the process that are no parameters (each storage once)."""
    import torch

    storages = {}
    for found in gc.get_objects():
        if isinstance(found, torch.Tensor) and not isinstance(found, torch.nn.Parameter):
            storage = found.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return round(sum(storages.values()) / 1e6, 1)


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def machine_info() -> dict:
    """The libraries and the machine a transformers bench measured on (both transformers benches record it)."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "lxt": _version("lxt"),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "platform": platform.machine(),
    }


if __name__ == "__main__":
    main()
