"""The transformers backend, driven as a user drives it: ``--lrp-model=models.py:NAME`` returning a Hugging Face
model built from a small config (random weights: nothing can be downloaded), real .npz inputs, real YAML.

Needs torch, transformers and lxt (pip install -e ".[transformers,test]"); without them the module is skipped.
"""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest

os.environ.setdefault("USE_TF", "0")  # transformers would import TensorFlow, for nothing here
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("lxt")
# Imported here, once: pytester's in-process runs drop the modules a run imported, and torch refuses to register
# its operator libraries a second time when transformers' modeling modules are imported again.
pytest.importorskip("lxt.efficient.models")
pytest.importorskip("transformers.models.vit.modeling_vit")
pytest.importorskip("pytest_lrp.transformer.explicit")

MODELS = '''
import torch
from transformers import (
    BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
    ViTConfig, ViTForImageClassification,
)


def llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    ))


def llama_classifier():
    """A decoder as a sequence classifier, without a pad token in its config (as many are)."""
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    return LlamaForSequenceClassification(LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, num_labels=3,
    ))


def gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64))


def bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, num_labels=3,
    ))


def vit():
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(
        image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_labels=3,
    ))


def vit_with_biases():
    """Biases as training leaves them (transformers initialises them to 0), a final LayerNorm's among them."""
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_labels=3,
    ))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(0.0, 0.1)
    return model


class MyRMSNorm(torch.nn.Module):
    """A normalisation of the user's own: LXT's Llama map does not know it."""

    def __init__(self, size, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class MyMLP(torch.nn.Module):
    """An MLP of the user's own, its activation a plain module: LXT's map patches LlamaMLP, not this."""

    def __init__(self, size):
        super().__init__()
        self.up = torch.nn.Linear(size, 2 * size, bias=False)
        self.act = torch.nn.SiLU()
        self.down = torch.nn.Linear(2 * size, size, bias=False)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


def llama_own_norm():
    model = llama()
    model.model.norm = MyRMSNorm(32)
    return model


def llama_own_mlp():
    model = llama()
    torch.manual_seed(3)
    model.model.layers[1].mlp = MyMLP(32)
    return model


class BertWithoutMask(BertForSequenceClassification):
    """A fault: the attention mask dropped, so that padding changes what the tokens attend to."""

    def forward(self, *args, attention_mask=None, **kwargs):
        return super().forward(*args, **kwargs)


def bert_without_mask():
    torch.manual_seed(0)
    model = BertWithoutMask(bert().config)
    model.load_state_dict(bert().state_dict())
    return model
'''


@pytest.fixture
def models(pytester):
    pytester.makepyfile(models=MODELS)
    return pytester


def _report(pytester, name="report.json") -> list:
    return json.loads((pytester.path / name).read_text())["results"]


def _outcomes(records: list) -> dict:
    return {(r["model"], r["rule"], r["check"]): r["outcome"] for r in records}


def _padded_text(path, samples=4, length=10, vocabulary=100, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocabulary, size=(samples, length))
    mask = np.ones_like(ids)
    for i in range(samples):
        mask[i, length - 3 * (i % 2) :] = 0
    tokens = np.array([[f"w{i}_{j}" for j in range(length)] for i in range(samples)])
    np.savez(path, input_ids=ids, attention_mask=mask, tokens=tokens)


def test_the_packaged_suite_on_four_families_conserves_or_leaks_only_as_declared(models):
    result = models.runpytest(
        "--lrp-model=models.py:llama",
        "--lrp-model=models.py:gpt2",
        "--lrp-model=models.py:bert",
        "--lrp-model=models.py:vit",
        "--lrp-report=report.json",
        "-rs",
        "-p",
        "no:cacheprovider",
    )
    records = _report(models)
    outcomes = _outcomes(records)
    assert result.ret == 0, result.stdout.str()
    assert not [key for key, outcome in outcomes.items() if outcome in ("failed", "error")]
    # CP-LRP's attention takes no relevance through the softmax: exact on Llama (no biases, no position embeddings).
    assert outcomes[("llama", "lxt-cp-lrp", "conservation")] == "passed"
    # AttnLRP's softmax rule loses relevance by design; GPT-2's position embeddings take their share.
    assert outcomes[("llama", "lxt-attnlrp", "conservation")] == "xfailed"
    assert outcomes[("gpt2", "lxt-cp-lrp", "conservation")] == "xfailed"
    # LXT 2.1 has no CP-LRP map for BERT: skipped, saying so.
    assert outcomes.get(("bert", "lxt-cp-lrp", "conservation"), "skipped") == "skipped"
    assert "no patches of LXT's cp_LRP map for transformers' bert models" in result.stdout.str()
    by_key = {(r["model"], r["rule"], r["check"]): r for r in records}
    llama = by_key[("llama", "lxt-attnlrp", "conservation")]
    names = [layer["name"] for layer in llama["layers"]]
    assert {"model.layers.0", "model.layers.0.self_attn", "model.layers.1.mlp", "model.norm"} <= set(names)
    assert names.index("model.layers.1") < names.index("model.layers.1.self_attn") < names.index("model.layers.0")
    total = llama["leaks"]["total"]
    assert total["softmax"] < 0 and total["unpatched"] == 0 and total["bias"] == 0
    gpt2 = by_key[("gpt2", "lxt-cp-lrp", "conservation")]["leaks"]["total"]
    assert gpt2["embeddings"] != 0 and gpt2["softmax"] == 0


def _lxt_direct(model, ids, mask):
    """LXT as its README shows: patch, embed, forward, backward from the largest logit of the last token."""
    from lxt.efficient.models import get_default_map
    from transformers.models.llama import modeling_llama

    from pytest_lrp.transformer.patching import lxt_patched

    with lxt_patched(get_default_map(modeling_llama)):  # what monkey_patch(modeling_llama) applies
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1]
        best = logits.max(dim=-1).values
        best.sum().backward()
        return (embeds * embeds.grad).sum(-1).detach().numpy(), best.detach().numpy()


def test_the_relevance_is_lxts_own_and_its_sum_is_what_the_report_says(models, tmp_path):
    import torch

    from pytest_lrp.config.model_spec import PythonModel
    from pytest_lrp.config.rulefile import load_rule_file
    from pytest_lrp.pytorch.loading import load_python_model
    from pytest_lrp.transformer.analysis import analyze
    from pytest_lrp.transformer.loading import as_transformer

    (models.path / "rules.yaml").write_text("rules:\n  - id: attnlrp\n    analyzer: lxt.attnlrp\n")
    rule = load_rule_file(models.path / "rules.yaml").rules[0]
    model = as_transformer(
        load_python_model(PythonModel(str(models.path / "models.py"), "llama"), "llama", "cpu", (12,))
    )
    x = model.load_inputs(None, 3, seed=5)
    x[:, 1] = 1  # no padding: LXT's README explains the last token of the sequence
    analysis = analyze(model, rule, x)
    expected, logits = _lxt_direct(model.module, torch.as_tensor(x[:, 0]), torch.as_tensor(x[:, 1]))
    np.testing.assert_allclose(analysis.heatmaps, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    np.testing.assert_allclose(analysis.targets, logits, rtol=1e-6)
    # The leak split adds up: every mechanism plus the rest is sum(R) - logit.
    account = analysis.leaks
    split = sum(account.total(name) for name in account.mechanisms) + account.total("unexplained")
    np.testing.assert_allclose(split, analysis.sums - analysis.targets, atol=1e-12)
    assert np.max(np.abs(account.total("unexplained"))) < 1e-5 * np.max(np.abs(logits))
    # LXT's patches are gone after the analysis: plain modules, and the attention functions transformers had.
    from transformers.models.llama import modeling_llama

    assert modeling_llama.LlamaRMSNorm.forward.__module__ == "transformers.models.llama.modeling_llama"
    assert torch.nn.Dropout.forward.__module__ == "torch.nn.modules.dropout"
    assert modeling_llama.eager_attention_forward.__module__ == "transformers.models.llama.modeling_llama"


@pytest.mark.parametrize(("factory", "named"), [("llama_own_norm", "MyRMSNorm"), ("llama_own_mlp", "SiLU")])
def test_an_operation_lxt_did_not_patch_fails_whatever_the_tolerance_and_is_named(models, factory, named):
    models.makefile(
        ".yaml",
        rules="""
        defaults: {tolerance: {rtol: 100.0, atol: 1.0}}
        rules:
          - id: cp
            analyzer: lxt.cp_lrp
            leaks: [bias, embeddings]
        """,
    )
    result = models.runpytest(
        f"--lrp-model=models.py:{factory}", "--lrp-model=models.py:llama", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(failed=1, passed=3)
    output = result.stdout.str()
    assert f"conservation[{factory}-cp]" in output and "an operation LXT did not patch" in output
    assert f"({named})" in output


def test_lxts_failed_to_patch_warning_reaches_the_report_not_stderr(models):
    models.makepyfile(
        patched_first="""
        from lxt.efficient import monkey_patch
        from transformers.models.llama import modeling_llama
        from models import llama

        def make():
            monkey_patch(modeling_llama)  # the user's own patch, left in place: LXT refuses to patch again
            return llama()
        """
    )
    result = models.runpytest_subprocess(
        "--lrp-model=patched_first.py:make", "--lrp-report=report.json", "-p", "no:cacheprovider", "-k", "attnlrp"
    )
    notes = [note for r in _report(models) for note in r.get("notes", [])]
    assert any("already patched" in note for note in notes), notes
    assert "already patched" not in result.stderr.str()


def test_padding_and_the_attention_mask_keep_a_sample_s_relevance(models):
    _padded_text(models.path / "text.npz")
    result = models.runpytest(
        "--lrp-model=models.py:bert",
        "--lrp-model=models.py:bert_without_mask",
        "--lrp-inputs=text.npz",
        "--lrp-report=report.json",
        "-p",
        "no:cacheprovider",
        "-k",
        "attnlrp",
    )
    outcomes = _outcomes(_report(models))
    assert outcomes[("bert", "lxt-attnlrp", "batch_invariance")] == "passed"
    assert outcomes[("bert_without_mask", "lxt-attnlrp", "batch_invariance")] == "failed", result.stdout.str()


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"input_ids": np.array([[1, 2, 300]])},
            "input_ids holds ids from 1 to 300, outside the model's vocabulary of 100",
        ),
        ({"x": np.zeros((2, 5), dtype=np.int64)}, "a text model's inputs are 'input_ids'"),
        (
            {"input_ids": np.ones((2, 5), dtype=np.int64), "attention_mask": np.ones((2, 4), dtype=np.int64)},
            "attention_mask must be 0/1 of input_ids' shape (2, 5)",
        ),
    ],
)
def test_bad_text_inputs_stop_the_run_with_one_line(models, arrays, message):
    np.savez(models.path / "bad.npz", **arrays)
    result = models.runpytest("--lrp-model=models.py:llama", "--lrp-inputs=bad.npz", "-p", "no:cacheprovider")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret != 0
    assert output.count(message) == 1, output
    assert "bad.npz" in output and "Traceback" not in output


def test_the_html_page_shows_the_tokens_coloured_and_vit_pictures(models):
    _padded_text(models.path / "text.npz", samples=2)
    models.makefile(
        ".yaml",
        rules="""
        rules:
          - id: cp
            analyzer: lxt.cp_lrp
            checks: [conservation, finite]
            leaks: [bias, embeddings]
        """,
    )
    result = models.runpytest(
        "--lrp-model=models.py:gpt2", "--lrp-inputs=text.npz", "--lrp-html=page.html", "-p", "no:cacheprovider"
    )
    page = (models.path / "page.html").read_text()
    assert result.ret == 0, result.stdout.str()
    assert '<span class="tokens">' in page and ">w0_0</span>" in page
    assert ">w1_9</span>" not in page  # padding is not shown
    result = models.runpytest("--lrp-model=models.py:vit", "--lrp-html=vit.html", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    assert "data:image/png;base64," in (models.path / "vit.html").read_text()


def test_bfloat16_runs_and_leaves_the_weights_as_loaded(models):
    models.makefile(
        ".yaml",
        rules="""
        defaults: {tolerance: {rtol: 0.05, atol: 1.0e-3}}
        rules:
          - id: cp16
            analyzer: lxt.cp_lrp
            params: {dtype: bfloat16}
            checks: [conservation, finite, determinism]
          - id: cp32
            analyzer: lxt.cp_lrp
            checks: [conservation, finite]
            tolerance: {rtol: 1.0e-4, atol: 1.0e-6}
        """,
    )
    result = models.runpytest("--lrp-model=models.py:llama", "-p", "no:cacheprovider", "--lrp-report=report.json")
    outcomes = _outcomes(_report(models))
    # cp32 runs after cp16 in the same session: a float32 analysis on weights bfloat16 had rounded would miss 1e-4.
    assert result.ret == 0, result.stdout.str()
    assert outcomes[("llama", "cp16", "conservation")] == "passed"
    assert outcomes[("llama", "cp32", "conservation")] == "passed"


def test_a_rule_file_for_both_kinds_of_pytorch_models_gives_each_its_rules(models):
    models.makepyfile(
        nets="""
        import torch

        def mlp():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(8, 4, bias=False), torch.nn.ReLU(), torch.nn.Linear(4, 2, bias=False))
        """
    )
    models.makefile(
        ".yaml",
        rules=textwrap.dedent(
            """
            defaults: {input_shape: [8]}
            rules:
              - id: zplus
                analyzer: zennit.rule.zplus
                target: positive_output
              - id: cp
                analyzer: lxt.cp_lrp
            """
        ),
    )
    result = models.runpytest("--lrp-model=nets.py:mlp", "--lrp-model=models.py:llama", "-p", "no:cacheprovider", "-v")
    output = result.stdout.str()
    assert "conservation[mlp-zplus]" in output and "conservation[llama-cp]" in output
    assert "conservation[mlp-cp]" not in output and "conservation[llama-zplus]" not in output


def test_the_reference_check_follows_lxt_block_by_block_and_sees_a_wrong_share(models, monkeypatch):
    import lxt.efficient.patches as patches

    models.makefile(
        ".yaml",
        rules="""
        rules:
          - id: attn
            analyzer: lxt.attnlrp
            checks: [reference]
        """,
    )
    result = models.runpytest("--lrp-model=models.py:llama", "--lrp-model=models.py:gpt2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    original = patches.divide_gradient

    def values_keep_everything(tensor, factor=2):  # the uniform rule broken: A V's values keep all of it
        return original(tensor, 1 if factor == 2 else factor)

    monkeypatch.setattr(patches, "divide_gradient", values_keep_everything)
    result = models.runpytest("--lrp-model=models.py:llama", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "lxt differs from the numpy reference" in output
    assert "first divergence from the output: block 'model.layers.1' (LlamaDecoderLayer)" in output


def test_a_model_file_importing_transformers_does_not_bring_tensorflow(models, monkeypatch):
    # transformers imports TensorFlow where it is installed unless USE_TF=0; the plugin sets it before the
    # model's code runs (TensorFlow first, then torch's triton, crashes the process).
    models.makepyfile(
        probe="""
        import sys
        from models import llama

        def make():
            assert "tensorflow" not in sys.modules, "transformers imported TensorFlow"
            return llama()
        """
    )
    monkeypatch.delenv("USE_TF", raising=False)
    result = models.runpytest_subprocess("--lrp-model=probe.py:make", "-p", "no:cacheprovider", "-k", "cp-lrp")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()


def test_without_lxt_a_transformers_model_stops_the_run_with_one_line(models, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lxt" else real(name, *a))
    result = models.runpytest("--lrp-model=models.py:llama", "-p", "no:cacheprovider")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret != 0
    assert output.count("a transformers model, explained with LXT, which this Python environment does not have") == 1


def test_pixel_values_from_a_file_and_a_wrong_shape_named(models):
    rng = np.random.default_rng(0)
    np.savez(models.path / "images.npz", pixel_values=rng.standard_normal((3, 3, 16, 16)).astype(np.float32))
    np.savez(models.path / "wrong.npz", pixel_values=rng.standard_normal((3, 16, 16, 3)).astype(np.float32))
    result = models.runpytest(
        "--lrp-model=models.py:vit", "--lrp-inputs=images.npz", "-p", "no:cacheprovider", "-k", "cp-lrp"
    )
    result.assert_outcomes(passed=3, xfailed=1)
    result = models.runpytest("--lrp-model=models.py:vit", "--lrp-inputs=wrong.npz", "-p", "no:cacheprovider")
    output = result.stdout.str() + result.stderr.str()
    assert output.count("wrong.npz: pixel_values of shape (3, 16, 16, 3) (float32) do not fit the model") == 1


def test_every_bias_share_is_counted_even_where_a_layer_barely_changes_the_total(models):
    # A LayerNorm whose relevance is ten times the logit, its bias's share 1e-3 of it: below the rounding share
    # of that module, but exact, so it is the bias mechanism's and not 'unexplained' beyond a tight tolerance.
    models.makefile(
        ".yaml",
        rules="""
        defaults: {tolerance: {rtol: 1.0e-4, atol: 1.0e-6}}
        rules:
          - id: cp
            analyzer: lxt.cp_lrp
            checks: [conservation]
            leaks: [bias, embeddings]
        """,
    )
    result = models.runpytest(
        "--lrp-model=models.py:vit_with_biases", "-p", "no:cacheprovider", "--lrp-report=report.json"
    )
    result.assert_outcomes(xfailed=1)
    (record,) = _report(models)
    assert abs(record["leaks"]["total"]["unexplained"]) < 1e-5 * abs(record["targets"][record["worst_sample"]])


def test_a_decoder_classifier_explains_its_last_kept_token_in_a_padded_batch(models):
    # transformers' own pooling, given embeddings, takes the last position (padding included) and refuses a
    # batch without a pad token; pytest-lrp explains the score of the last token the mask keeps.
    _padded_text(models.path / "text.npz")
    result = models.runpytest(
        "--lrp-model=models.py:llama_classifier", "--lrp-inputs=text.npz", "-p", "no:cacheprovider", "-rxs"
    )
    result.assert_outcomes(passed=11, xfailed=1)  # the block reference runs too
    import torch

    from pytest_lrp.config.model_spec import PythonModel
    from pytest_lrp.pytorch.loading import load_python_model
    from pytest_lrp.transformer.loading import as_transformer

    model = as_transformer(
        load_python_model(PythonModel(str(models.path / "models.py"), "llama_classifier"), "c", "cpu", None)
    )
    x = model.load_inputs(models.path / "text.npz", None, 0)
    with torch.no_grad():
        batch = model.predict(x)
        alone = np.concatenate([model.predict(x[i : i + 1, :, : int(x[i, 1].sum())]) for i in range(len(x))])
    np.testing.assert_allclose(batch, alone, rtol=1e-5, atol=1e-6)


def test_golden_token_relevance_holds_and_a_changed_rule_is_seen(models):
    models.makefile(".yaml", rules="rules:\n  - id: r\n    analyzer: lxt.cp_lrp\n    checks: [baseline]\n")
    models.runpytest("--lrp-model=models.py:llama", "--lrp-update-baselines", "-p", "no:cacheprovider").assert_outcomes(
        passed=1
    )
    models.runpytest("--lrp-model=models.py:llama", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    models.makefile(".yaml", rules="rules:\n  - id: r\n    analyzer: lxt.attnlrp\n    checks: [baseline]\n")
    result = models.runpytest("--lrp-model=models.py:llama", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert "heatmaps differ from the baseline lrp_baselines/llama/r.npz" in result.stdout.str()
