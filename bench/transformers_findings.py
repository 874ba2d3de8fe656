"""What LXT's rules conserve on transformers' model families, measured through pytest-lrp, and how often the packaged
suite cries wolf on them.

    USE_TF=0 python bench/transformers_findings.py                       # every section (about 3 minutes, 2 cores)
    USE_TF=0 python bench/transformers_findings.py --sections zoo        # one section: conservation, skew, zoo
    USE_TF=0 python bench/transformers_findings.py --update              # also write bench/last_run_transformers_findings.json

Models are built from small configs with random weights (seeded; nothing is downloaded), from a models.py this script
writes into a temporary folder. Text models read 32 random tokens, right-padded to different lengths (the packaged
suite's inputs); pytest-lrp explains the largest logit, of the last kept token for a causal LM.

- conservation: per family (Llama, Qwen2, Qwen3, GPT-2, BERT for sequence classification, ViT for image
  classification on 32x32 images, patches of 8) and size (hidden 32 with 2 layers, hidden 128 with 4), 3 seeds of 8
  samples, for lxt.attnlrp and lxt.cp_lrp: the median and largest relative conservation error |sum R - logit| / |logit|
  over the 24 samples, and the mean of each leak mechanism (pytest_lrp/transformer/accounting.py), a share of
  the logit, signed: -0.3 took 30 % of the logit from the input's relevance). Also bfloat16 (params: {dtype:
  bfloat16}) for Llama and GPT-2, beside float32 on the same weights and inputs; Llama with initializer_range 0.2
  (weights further from their init: attention logits further from 0); GPT-2, BERT and ViT with random biases
  (transformers initialises every bias to 0, which leaves the bias mechanism nothing to measure).
- skew: LXT's README says Qwen3's attributions are skewed toward the first token. The first token's share of
  sum |R| at the input, Qwen3 beside Llama, same sizes and seeds (and initializer_range 0.2); and where it comes from:
  the first token's share of |R| at every block's input (the residual stream, R = hidden x gradient in the same
  patched pass), and each block's change of the total relevance (analysis.layers), as a share of |logit| -- a
  redistribution between tokens moves the share without changing the total, a leak changes the total.
- zoo: the packaged suite (no rules.yaml: `pytest --lrp-model=models.py:NAME`) on 17 models, the six families and
  variants; every failed or erroring test is a false alarm (the models are what LXT's maps are written for).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from common import RESULTS, ROOT, pytest_cmd
from transformers_speed import _code_digest as code_digest
from transformers_speed import machine_info

os.environ.setdefault("USE_TF", "0")  # transformers would import TensorFlow, for nothing here

LAST_RUN = ROOT / "bench" / "last_run_transformers_findings.json"
FAMILIES = ("llama", "qwen2", "qwen3", "gpt2", "bert", "vit")
SIZES = {"h32": (32, 2), "h128": (128, 4)}  # hidden size, layers
SEEDS = (0, 1, 2)
SAMPLES = 8
TOKENS = 32
ANALYZERS = ("lxt.attnlrp", "lxt.cp_lrp")
BFLOAT16_FAMILIES = ("llama", "gpt2")
MECHANISMS = ("softmax", "bias", "embeddings", "unpatched", "unexplained")

MODELS = '''
import torch
from transformers import (
    BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
    Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM, ViTConfig, ViTForImageClassification,
)


def make(family, hidden=32, layers=2, seed=0, init=0.02, biases=0.0, **extra):
    """A model of ``family`` with random weights: 4 attention heads, vocabulary 100, MLP twice the hidden size;
    ``biases``: the standard deviation of random biases (transformers initialises them to 0)."""
    model = _make(family, hidden, layers, seed, init, **extra)
    if biases:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith(".bias"):
                    parameter.normal_(0.0, biases)
    return model


def _make(family, hidden, layers, seed, init, **extra):
    torch.manual_seed(seed)
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                  initializer_range=init)
    if family in ("llama", "qwen2", "qwen3"):
        config, model = {
            "llama": (LlamaConfig, LlamaForCausalLM),
            "qwen2": (Qwen2Config, Qwen2ForCausalLM),
            "qwen3": (Qwen3Config, Qwen3ForCausalLM),
        }[family]
        heads = dict(num_key_value_heads=2, max_position_embeddings=64)
        if family == "qwen3":
            heads["head_dim"] = hidden // 4
        return model(config(vocab_size=100, **common, **heads, **extra))
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=hidden, n_layer=layers, n_head=4, n_positions=64,
                                          initializer_range=init, **extra))
    if family == "bert":
        extra.setdefault("num_labels", 3)
        return BertForSequenceClassification(BertConfig(vocab_size=100, max_position_embeddings=64, **common, **extra))
    if family == "vit":
        extra.setdefault("num_labels", 3)
        extra.setdefault("patch_size", 8)
        return ViTForImageClassification(ViTConfig(image_size=32, **common, **extra))
    raise ValueError(family)
'''

# The zoo of the false-alarm count: name -> (what it is, make()'s arguments).
ZOO = {
    "llama": ("Llama, hidden 32, 2 layers", "'llama'"),
    "qwen2": ("Qwen2, hidden 32, 2 layers", "'qwen2'"),
    "qwen3": ("Qwen3, hidden 32, 2 layers", "'qwen3'"),
    "gpt2": ("GPT-2, hidden 32, 2 layers", "'gpt2'"),
    "bert": ("BERT for sequence classification, 3 labels", "'bert'"),
    "vit": ("ViT, 32x32 images, patches of 8", "'vit'"),
    "llama_seed1_h128": ("Llama, seed 1, hidden 128, 4 layers", "'llama', hidden=128, layers=4, seed=1"),
    "llama_init02": ("Llama, initializer_range 0.2", "'llama', init=0.2"),
    "llama_tied": ("Llama, tied input and output embeddings", "'llama', tie_word_embeddings=True"),
    "gpt2_eager": ("GPT-2, attn_implementation 'eager'", "'gpt2', attn_implementation='eager'"),
    "qwen2_3layers": ("Qwen2, 3 layers", "'qwen2', layers=3"),
    "qwen3_seed2_init02": ("Qwen3, seed 2, initializer_range 0.2", "'qwen3', seed=2, init=0.2"),
    "bert_5labels": ("BERT, 5 labels", "'bert', num_labels=5"),
    "vit_patch4": ("ViT, patches of 4", "'vit', patch_size=4"),
    "gpt2_biases": ("GPT-2, random biases (N(0, 0.1))", "'gpt2', biases=0.1"),
    "qwen2_biases": ("Qwen2, random q/k/v biases (N(0, 0.1))", "'qwen2', biases=0.1"),
    "vit_h128_biases": (
        "ViT, hidden 128, 4 layers, random biases (N(0, 0.1))",
        "'vit', hidden=128, layers=4, biases=0.1",
    ),
}
BIASES = 0.1  # conservation's variant: GPT-2, BERT and ViT with random biases (all are 0 at transformers' init)


# Variants of every family, size and seed: the factory's suffix -> make()'s arguments after the seed.
VARIANTS = {"": "init=0.02", "_init02": "init=0.2", "_biases": f"biases={BIASES}"}
VARIANT_LABELS = {"": "", "_init02": "initializer_range 0.2", "_biases": f"random biases, N(0, {BIASES})"}


def models_source() -> str:
    source = MODELS
    for family in FAMILIES:
        for size, (hidden, layers) in SIZES.items():
            for seed in SEEDS:
                for variant, arguments in VARIANTS.items():
                    source += (
                        f"\n\ndef {family}_{size}_s{seed}{variant}():\n"
                        f"    return make({family!r}, {hidden}, {layers}, {seed}, {arguments})\n"
                    )
    for name, (_, arguments) in ZOO.items():
        source += f"\n\ndef {name}():\n    return make({arguments})\n"
    return source


class Models:
    """The models.py in a temporary folder, and rules for the analyses."""

    def __init__(self, folder: Path):
        self.folder = folder
        (folder / "models.py").write_text(models_source())
        self._cache: dict = {}

    def load(self, name: str):
        from pytest_lrp.config.model_spec import PythonModel
        from pytest_lrp.pytorch.loading import load_python_model
        from pytest_lrp.transformer.loading import as_transformer

        if name not in self._cache:
            self._cache.clear()  # one model at a time in memory
            spec = PythonModel(str(self.folder / "models.py"), name)
            self._cache[name] = as_transformer(load_python_model(spec, name, "cpu", (TOKENS,)))
        return self._cache[name]

    def rule(self, analyzer: str, dtype: str = "float32"):
        from pytest_lrp.config.rulefile import load_rule_file

        path = self.folder / f"{analyzer}_{dtype}.yaml"
        params = "" if dtype == "float32" else f"    params: {{dtype: {dtype}}}\n"
        path.write_text(f"rules:\n  - id: r\n    analyzer: {analyzer}\n{params}    checks: [conservation]\n")
        return load_rule_file(path).rules[0]


def _analyze(models: Models, name: str, analyzer: str, dtype: str = "float32", seed: int = 0):
    """(analysis, inputs), or (None, the refusal's message) where LXT has no map for the model."""
    import pytest

    from pytest_lrp.transformer.analysis import analyze

    model = models.load(name)
    x = model.load_inputs(None, SAMPLES, seed)
    try:
        return analyze(model, models.rule(analyzer, dtype), x), x
    except pytest.skip.Exception as refusal:
        return None, str(refusal.msg if hasattr(refusal, "msg") else refusal)


def _shares(analysis) -> dict:
    """Per sample: each leak mechanism over the logit, |leak| / |logit| signed as the leak is to the logit (-0.3: it
    took 30 % of the logit away from the input's relevance; +0.3: it added as much)."""
    return {name: analysis.leaks.total(name) / analysis.targets for name in MECHANISMS}


def _summary(errors: list, shares: list) -> dict:
    import numpy as np

    errors = np.concatenate(errors)
    return {
        "median_relative_error": float(np.median(errors)),
        "max_relative_error": float(np.max(errors)),
        "mean_leak_share": {name: float(np.mean(np.concatenate([s[name] for s in shares]))) for name in MECHANISMS},
        "mean_abs_leak_share": {
            name: float(np.mean(np.abs(np.concatenate([s[name] for s in shares])))) for name in MECHANISMS
        },
        "max_abs_leak_share": {
            name: float(np.max(np.abs(np.concatenate([s[name] for s in shares])))) for name in MECHANISMS
        },
        "samples": len(errors),
    }


def conservation(models: Models) -> dict:
    import numpy as np

    rows = []
    cases = [(family, size, "") for family in FAMILIES for size in SIZES]
    cases += [("llama", size, "_init02") for size in SIZES] + [
        (f, size, "_biases") for f in ("gpt2", "bert", "vit") for size in SIZES
    ]
    for family, size, suffix in cases:
        hidden, layers = SIZES[size]
        for analyzer in ANALYZERS:
            dtypes = ("float32", "bfloat16") if family in BFLOAT16_FAMILIES and not suffix else ("float32",)
            found: dict = {dtype: {"errors": [], "shares": [], "heatmaps": []} for dtype in dtypes}
            refusal = None
            for seed in SEEDS:
                for dtype in dtypes:
                    analysis, x = _analyze(models, f"{family}_{size}_s{seed}{suffix}", analyzer, dtype, seed)
                    if analysis is None:
                        refusal = x
                        break
                    found[dtype]["errors"].append(analysis.relative_errors)
                    found[dtype]["shares"].append(_shares(analysis))
                    found[dtype]["heatmaps"].append(analysis.heatmaps)
            row = {
                "family": family,
                "size": size,
                "hidden": hidden,
                "layers": layers,
                "variant": VARIANT_LABELS[suffix],
                "analyzer": analyzer,
            }
            if refusal is not None:
                rows.append({**row, "dtype": "float32", "status": "no map", "message": refusal.splitlines()[0]})
                print(f"{family} {size} {analyzer}: no map ({refusal.splitlines()[0]})", flush=True)
                continue
            for dtype in dtypes:
                entry = {
                    **row,
                    "dtype": dtype,
                    "status": "ok",
                    **_summary(found[dtype]["errors"], found[dtype]["shares"]),
                }
                if dtype == "bfloat16":
                    fp32 = rows[-1]
                    entry["median_minus_float32"] = entry["median_relative_error"] - fp32["median_relative_error"]
                    # per sample: max |R(bf16) - R(fp32)| / max |R(fp32)|, the median over the samples
                    differences = [
                        np.max(np.abs(h16 - h32), axis=1) / np.max(np.abs(h32), axis=1)
                        for h16, h32 in zip(found["bfloat16"]["heatmaps"], found["float32"]["heatmaps"])
                    ]
                    entry["heatmap_difference_to_float32"] = float(np.median(np.concatenate(differences)))
                rows.append(entry)
                print(
                    f"{family} {size}{suffix} {analyzer} {dtype}: median {entry['median_relative_error']:.3g}, "
                    f"max {entry['max_relative_error']:.3g}; leaks "
                    + ", ".join(f"{k} {v:+.3g}" for k, v in entry["mean_leak_share"].items()),
                    flush=True,
                )
    return {"rows": rows, "seeds": len(SEEDS), "samples_per_seed": SAMPLES, "tokens": TOKENS}


def _per_block(model, analyzer: str, x):
    """Per block input (the residual stream) and the final norm's: the relevance per token, hidden x gradient in
    the patched pass pytest-lrp's analysis runs; [blocks + 1] arrays of (samples, tokens)."""
    import numpy as np
    import torch

    from pytest_lrp.transformer.lxt_maps import patch_map
    from pytest_lrp.transformer.patching import lxt_patched

    seen: list = []

    def keep(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        hidden.retain_grad()
        seen.append(hidden)

    stops = [*model.module.model.layers, model.module.model.norm]
    handles = [stop.register_forward_pre_hook(keep, with_kwargs=True) for stop in stops]
    try:
        with lxt_patched(patch_map(analyzer, model)):
            ids, _ = model.split(x)
            embeds = model.module.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = model.logits(x, inputs_embeds=embeds)
            selected = logits[torch.arange(len(x)), logits.argmax(dim=1)]
            selected.sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    return [(h.detach() * h.grad).sum(-1).double().numpy() for h in seen], np.asarray(x[:, 1])


def _first_share(relevance, mask):
    """Per sample: |R| of the first token over sum |R| of the kept tokens."""
    import numpy as np

    kept = np.abs(relevance) * mask
    return kept[:, 0] / kept.sum(axis=1)


def skew(models: Models) -> dict:
    import numpy as np

    rows = []
    for family in ("qwen3", "llama"):
        for size, (hidden, layers) in SIZES.items():
            for init in (0.02, 0.2):
                suffix = "" if init == 0.02 else "_init02"
                for analyzer in ANALYZERS:
                    input_share, per_block, changes, uniform, check = [], [], [], [], []
                    for seed in SEEDS:
                        name = f"{family}_{size}_s{seed}{suffix}"
                        analysis, x = _analyze(models, name, analyzer, "float32", seed)
                        mask = x[:, 1]
                        input_share.append(_first_share(analysis.heatmaps, mask))
                        uniform.append(1.0 / mask.sum(axis=1))
                        blocks, _ = _per_block(models.load(name), analyzer, x)
                        check.append(np.max(np.abs(blocks[0] - analysis.heatmaps)) / np.max(np.abs(analysis.heatmaps)))
                        per_block.append(np.stack([_first_share(b, mask) for b in blocks]))
                        by_name = {layer.name: layer for layer in analysis.layers}
                        scale = np.abs(analysis.targets)
                        changes.append(
                            np.stack(
                                [
                                    (by_name[f"model.layers.{i}"].at_inputs - by_name[f"model.layers.{i}"].at_output)
                                    / scale
                                    for i in range(layers)
                                ]
                            )
                        )
                    per_block_share = np.concatenate(per_block, axis=1).mean(axis=1)
                    row = {
                        "family": family,
                        "size": size,
                        "hidden": hidden,
                        "layers": layers,
                        "initializer_range": init,
                        "analyzer": analyzer,
                        "first_token_share": float(np.mean(np.concatenate(input_share))),
                        "first_token_share_max": float(np.max(np.concatenate(input_share))),
                        "uniform_share": float(np.mean(np.concatenate(uniform))),
                        # block 0's input is the embeddings (the heatmap); the last entry is the final norm's input
                        "first_token_share_per_block_input": [float(v) for v in per_block_share],
                        "block_change_share": [float(v) for v in np.concatenate(changes, axis=1).mean(axis=1)],
                        "block_input_vs_heatmap": float(max(check)),
                    }
                    rows.append(row)
                    print(
                        f"skew {family} {size} init {init} {analyzer}: first token {row['first_token_share']:.3f} "
                        f"(uniform {row['uniform_share']:.3f}); per block input "
                        + ", ".join(f"{v:.3f}" for v in row["first_token_share_per_block_input"])
                        + "; block changes "
                        + ", ".join(f"{v:+.3f}" for v in row["block_change_share"]),
                        flush=True,
                    )
    return {"rows": rows, "verdict": _skew_verdict(rows)}


def _skew_verdict(rows: list) -> str:
    """The skew section's finding, in numbers."""

    def pick(family, analyzer, **where):
        return [
            r
            for r in rows
            if r["family"] == family and r["analyzer"] == analyzer and all(r[k] == v for k, v in where.items())
        ]

    def mean(found, key="first_token_share"):
        return statistics.mean(r[key] for r in found)

    qwen3, llama = mean(pick("qwen3", "lxt.attnlrp")), mean(pick("llama", "lxt.attnlrp"))
    uniform = mean(pick("qwen3", "lxt.attnlrp"), "uniform_share")
    reproduced = qwen3 > 1.5 * llama and qwen3 > 2 * uniform
    deep = {"size": "h128", "initializer_range": 0.02}
    shares = {
        (family, analyzer): mean(pick(family, analyzer, **deep))
        for family in ("qwen3", "llama")
        for analyzer in ANALYZERS
    }
    cp_change = max(abs(v) for r in rows if r["analyzer"] == "lxt.cp_lrp" for v in r["block_change_share"])
    pairs = {}
    for r in rows:
        pairs.setdefault((r["family"], r["size"], r["initializer_range"]), {})[r["analyzer"]] = r["first_token_share"]
    grows = all(
        all(a >= b for a, b in zip(r["first_token_share_per_block_input"], r["first_token_share_per_block_input"][1:]))
        for r in rows
    )
    below = all(p["lxt.attnlrp"] < p["lxt.cp_lrp"] for p in pairs.values())
    attn_change = min(v for r in rows if r["analyzer"] == "lxt.attnlrp" for v in r["block_change_share"])
    return (
        f"AttnLRP, mean over sizes, seeds and initializer ranges: the first token holds {qwen3:.3f} of sum |R| on "
        f"Qwen3, {llama:.3f} on Llama ({qwen3 / llama:.2f} x; a uniform share is {uniform:.3f}): "
        + (
            "Qwen3's skew reproduces with random weights. "
            if reproduced
            else "Qwen3's skew does not reproduce with random weights (LXT's README speaks of trained Qwen3; an "
            "attention sink at the first token is learned, not initialised). "
        )
        + "In the deeper models (hidden 128, 4 layers, initializer_range 0.02) the first token holds, AttnLRP:"
        f" Qwen3 {shares['qwen3', 'lxt.attnlrp']:.3f}, Llama "
        f"{shares['llama', 'lxt.attnlrp']:.3f}; CP-LRP Qwen3 {shares['qwen3', 'lxt.cp_lrp']:.3f}, Llama "
        f"{shares['llama', 'lxt.cp_lrp']:.3f}. The share is 0 at the last block's output (only the last token's logit "
        "is explained) and "
        + ("grows block by block toward the input in every case" if grows else "does not always grow toward the input")
        + ", under CP-LRP too, whose blocks change the total "
        f"relevance by at most {cp_change:.1e} of the logit: a redistribution between tokens (as causal attention near "
        "uniform does: every later token hands the first a share), not a conservation effect. AttnLRP's blocks also "
        f"lose relevance (down to {attn_change:+.3f} of the logit in one block), a conservation effect, but its "
        + (
            "first-token shares are below CP-LRP's in every case, not above."
            if below
            else "first-token shares are not always below CP-LRP's."
        )
    )


def _junit(path: Path) -> list:
    """[(test, outcome, the first line of its message)]."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                message = (child.get("message") or child.text or "").strip().splitlines()[:1]
                message = message[0] if message else ""
            elif child.tag == "skipped":
                outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
        rows.append((case.get("name"), outcome, message))
    return rows


def zoo(models: Models) -> dict:
    env = {**os.environ, "USE_TF": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    found = {}
    for name, (description, _) in ZOO.items():
        xml = models.folder / f"{name}.xml"
        started = time.perf_counter()
        proc = subprocess.run(
            pytest_cmd(f"--lrp-model=models.py:{name}", f"--junitxml={xml}", "-rs"),
            cwd=models.folder,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
        tests = _junit(xml) if xml.exists() else []
        counts: dict = {}
        for _, outcome, _ in tests:
            counts[outcome] = counts.get(outcome, 0) + 1
        red = [{"test": test, "message": message} for test, outcome, message in tests if outcome in ("failed", "error")]
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] if proc.returncode not in (0, 1) else []
        found[name] = {
            "description": description,
            "counts": counts,
            "red": red,
            "exit": proc.returncode,
            "seconds": round(seconds, 1),
            "tail": tail,
        }
        print(f"zoo {name}: {counts} ({seconds:.0f} s, exit {proc.returncode})", flush=True)
        for entry in red:
            print(f"    RED {entry['test']}: {entry['message']}", flush=True)
    return {"models": found, "false_alarms": sum(len(entry["red"]) for entry in found.values())}


SECTIONS = {"conservation": conservation, "skew": skew, "zoo": zoo}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--update", action="store_true", help="write the sections run into the last-run file")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # small models: one thread is faster, and the cores are shared
    document = json.loads(LAST_RUN.read_text()) if args.update and LAST_RUN.exists() else {}
    with tempfile.TemporaryDirectory() as folder:
        models = Models(Path(folder))
        for section in args.sections:
            started = time.perf_counter()
            document[section] = SECTIONS[section](models)
            document[section]["seconds"] = round(time.perf_counter() - started, 1)
            document[section]["when"] = time.strftime("%Y-%m-%d %H:%M")
    document["code_digest"] = code_digest()
    document["machine"] = {**machine_info(), "executable": Path(sys.executable).name}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "transformers_findings.json").write_text(json.dumps(document, indent=2))
    if args.update:
        LAST_RUN.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
