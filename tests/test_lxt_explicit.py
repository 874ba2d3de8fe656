"""pytest_lrp.transformer.explicit: LXT's explicit AttnLRP rules on transformers' Llama, checked against lxt.efficient.

Both implement AttnLRP: lxt.efficient as input x gradient with patched gradients, the explicit map with LXT's
autograd Functions that propagate relevance itself. On the same tiny random Llama they must give the same
relevance per input token up to the epsilons of the explicit rules, leave the forward pass as it was, and be
undone after the analysis; a map with one operation wrong must be caught by the same comparison.
"""

from __future__ import annotations

import operator
import os

import pytest

os.environ.setdefault("USE_TF", "0")  # transformers would import TensorFlow where it is installed
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("lxt")

from lxt.efficient.models.llama import attnLRP  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

from pytest_lrp.transformer import explicit  # noqa: E402
from pytest_lrp.transformer.explicit import explicit_patch_map  # noqa: E402
from pytest_lrp.transformer.patching import lxt_patched  # noqa: E402

# Relative to max |R|. What separates the two implementations is the explicit rules' epsilons (the efficient
# rules have none); at transformers' default initializer_range the layers' outputs are so small that the
# epsilons show, hence initializer_range 0.2 here: activations of order one, as in a trained model, and
# attention far from uniform. The agreement measured is in docs/transformers.md.
TOLERANCE = 2e-5
PATCHED = (torch.nn.Linear, modeling_llama.LlamaRMSNorm, modeling_llama.LlamaMLP, modeling_llama.LlamaAttention)
PATCHED += (modeling_llama.LlamaDecoderLayer,)


def _config(attention: str, **extra):
    return transformers.LlamaConfig(
        vocab_size=80,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.2,
        attn_implementation=attention,
        **extra,
    )


def _build(cls, config):
    torch.manual_seed(0)
    model = cls(config).eval().requires_grad_(False)
    ids = torch.randint(0, config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    return model, ids


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def causal_lm(request):
    torch.set_num_threads(2)
    return _build(transformers.LlamaForCausalLM, _config(request.param))


def _relevance(model, ids, patch_map, explicit_rules: bool):
    """Relevance per input token of each sample's largest last-position logit, and the last-position logits."""
    with lxt_patched(patch_map):
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
        logits = model(inputs_embeds=embeds).logits
        logits = logits[:, -1] if logits.dim() == 3 else logits
        selected = logits.max(-1).values
        if explicit_rules:
            selected.backward(selected.detach())  # each sample's own logit is its relevance to start from
            relevance = embeds.grad.sum(-1)
        else:
            selected.sum().backward()
            relevance = (embeds * embeds.grad).sum(-1)
    return relevance.detach(), logits.detach()


def _disagreement(model, ids) -> float:
    efficient, _ = _relevance(model, ids, attnLRP, False)
    explicit_relevance, _ = _relevance(model, ids, explicit_patch_map(model), True)
    return ((efficient - explicit_relevance).abs().max() / efficient.abs().max()).item()


def test_explicit_rules_agree_with_efficient(causal_lm):
    model, ids = causal_lm
    efficient, _ = _relevance(model, ids, attnLRP, False)
    explicit_relevance, _ = _relevance(model, ids, explicit_patch_map(model), True)
    assert efficient.abs().max() > 0.1
    error = (efficient - explicit_relevance).abs().max() / efficient.abs().max()
    assert error <= TOLERANCE, f"explicit vs efficient AttnLRP differ by {error:.2e} of max |R|"


def test_forward_unchanged_by_the_patches(causal_lm):
    model, ids = causal_lm
    unpatched = model(ids).logits[:, -1]
    _, patched = _relevance(model, ids, explicit_patch_map(model), True)
    torch.testing.assert_close(patched, unpatched, rtol=0, atol=1e-5)


def test_patches_are_undone_after_the_analysis(causal_lm):
    model, ids = causal_lm
    before = model(ids).logits
    originals = {cls: vars(cls)["forward"] for cls in PATCHED}
    with lxt_patched(explicit_patch_map(model)) as notes:
        assert all(vars(cls)["forward"] is not originals[cls] for cls in PATCHED)
    assert notes == []
    assert {cls: vars(cls)["forward"] for cls in PATCHED} == originals
    assert torch.equal(model(ids).logits, before)


def test_only_llama_models_get_a_map(causal_lm):
    model, _ = causal_lm
    assert explicit_patch_map(model.model) is not None  # LlamaModel
    assert explicit_patch_map(torch.nn.Sequential(torch.nn.Linear(2, 2))) is None


@pytest.mark.parametrize(
    "name, wrong",
    [("add2", operator.add), ("mul2", operator.mul), ("identity", lambda activation, x: activation(x))],
    ids=["residual-add-by-torch", "products-by-torch", "silu-by-its-gradient"],
)
def test_one_wrong_operation_is_caught(causal_lm, monkeypatch, name, wrong):
    """torch's + hands each residual branch all of the relevance, torch's * scales it by the other factor, and
    SiLU's gradient replaces the identity rule. Measured: 5.7e3, 1.3 and 9e-2 of max |R|."""
    model, ids = causal_lm
    monkeypatch.setattr(explicit, name, wrong)
    assert _disagreement(model, ids) > 100 * TOLERANCE


def test_sequence_classification_agrees():
    """The score head is a Linear, and the pooling of the last token a selection that moves relevance unchanged."""
    model, ids = _build(transformers.LlamaForSequenceClassification, _config("eager", num_labels=3, pad_token_id=0))
    assert _disagreement(model, ids) <= TOLERANCE
