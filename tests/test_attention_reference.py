"""pytest_lrp.reference.attention against LXT's efficient AttnLRP on one transformer block, and faults caught.

Tiny random models (transformers' Llama with grouped-query attention and rotary embedding, with and without
biases; GPT-2 with its fused c_attn and LayerNorm biases): a forward pre-hook captures block 0's input and
keyword arguments (Llama's cos/sin among them), then the block runs again under LXT's patches (lxt 2.1's
attnLRP maps, applied and undone by lxt_patched). LXT's relevance is gradient x input: for a chosen gradient
g at the block's output, the output relevance is out * g and the input relevance hidden_in * d(out . g)/d
hidden_in. The numpy reference propagates out * g by the rules written out, in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("lxt")

from lxt.efficient.models import gpt2 as lxt_gpt2  # noqa: E402
from lxt.efficient.models import llama as lxt_llama  # noqa: E402
from lxt.efficient.patches import patch_method  # noqa: E402
from lxt.efficient.rules import stop_gradient  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.models.gpt2 import modeling_gpt2  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

from pytest_lrp.reference import attention as ref  # noqa: E402
from pytest_lrp.transformer.patching import lxt_patched  # noqa: E402
from pytest_lrp.transformer.reference import gpt2_block, llama_block  # noqa: E402

# Max |R_reference - R_LXT| / max |R_LXT| where both sides compute in float64: what is left is rounding.
TOLERANCE = 1e-10
# LXT's rms_norm_forward (like transformers' LlamaRMSNorm) casts to float32 whatever the model's dtype, so the
# Llama block as shipped agrees only to float32 rounding, amplified through the block.
TOLERANCE_FLOAT32_NORM = 1e-4
# The accounting identity is a sum of float64 terms: relative to sum |R_out|.
ACCOUNTING = 1e-12
SEQ = 10
HEAD_DIM = 8


def _rms_norm_forward_float64(self, hidden_states):
    """lxt.efficient.patches.rms_norm_forward without its cast to float32: the same rule (no gradient through
    the variance) in the model's dtype, so that the comparison is not limited by float32 rounding."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * stop_gradient(torch.rsqrt(variance + self.variance_epsilon)))


LLAMA_FLOAT64 = {**lxt_llama.attnLRP, modeling_llama.LlamaRMSNorm: partial(patch_method, _rms_norm_forward_float64)}


@dataclass
class Case:
    name: str
    block: ref.LlamaBlock | ref.GPT2Block
    hidden: np.ndarray
    relevance_out: np.ndarray
    relevance_in_lxt: np.ndarray
    output_lxt: np.ndarray


def _randomise(model, seed: int) -> None:
    """Weights far from their initialisation: GPT-2 starts with zero biases and unit LayerNorms, Llama with
    unit RMSNorms, which would hide a bias or a norm weight used in the wrong place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            if parameter.ndim > 1:
                parameter.copy_(0.3 * noise)
            elif name.endswith("weight"):
                parameter.copy_(1.0 + 0.2 * noise)
            else:
                parameter.copy_(0.2 * noise)


def _lxt_case(name, model, layer, patch_map, block_from_layer, vocab: int, seed: int) -> Case:
    torch.manual_seed(seed)
    _randomise(model, seed)
    input_ids = torch.randint(0, vocab, (1, SEQ), generator=torch.Generator().manual_seed(seed + 1))
    seen = {}

    def capture(module, args, kwargs):
        seen["args"], seen["kwargs"] = args, dict(kwargs)

    handle = layer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids, use_cache=False)
    finally:
        handle.remove()
    args, kwargs = seen["args"], seen["kwargs"]
    hidden = (args[0] if args else kwargs.pop("hidden_states")).detach()
    with lxt_patched(patch_map):
        x = hidden.clone().requires_grad_(True)
        out = layer(x, *args[1:], **kwargs)[0]
        gradient = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 2), dtype=out.dtype)
        (grad,) = torch.autograd.grad(out, x, grad_outputs=gradient)
    return Case(
        name=name,
        block=block_from_layer(layer, kwargs),
        hidden=hidden[0].numpy(),
        relevance_out=(out * gradient).detach()[0].numpy(),
        relevance_in_lxt=(x * grad).detach()[0].numpy(),
        output_lxt=out.detach()[0].numpy(),
    )


def _llama_block(layer, kwargs) -> ref.LlamaBlock:
    cos, sin = kwargs["position_embeddings"]
    return llama_block(layer, cos[0], sin[0])


def _gpt2_block(layer, kwargs) -> ref.GPT2Block:
    return gpt2_block(layer)


def _llama(bias: bool, patch_map, name: str) -> Case:
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HEAD_DIM,
        max_position_embeddings=32,
        attention_bias=bias,
        mlp_bias=bias,
        attn_implementation="sdpa",  # eager computes the softmax in float32
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).double().eval()
    return _lxt_case(name, model, model.model.layers[0], patch_map, _llama_block, 64, seed=3 + bias)


def _gpt2() -> Case:
    config = GPT2Config(
        vocab_size=64,
        n_positions=32,
        n_embd=32,
        n_layer=1,
        n_head=4,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).double().eval()
    return _lxt_case("gpt2", model, model.transformer.h[0], lxt_gpt2.attnLRP, _gpt2_block, 64, seed=5)


_BUILDERS = {
    "llama": lambda: _llama(False, LLAMA_FLOAT64, "llama"),
    "llama_bias": lambda: _llama(True, LLAMA_FLOAT64, "llama_bias"),
    "gpt2": _gpt2,
}


@pytest.fixture(scope="module", params=list(_BUILDERS))
def case(request) -> Case:
    return _BUILDERS[request.param]()


@pytest.fixture(scope="module")
def llama_as_shipped() -> Case:
    return _llama(False, lxt_llama.attnLRP, "llama_as_shipped")


def _relative_difference(relevance, lxt):
    return float(np.max(np.abs(relevance - lxt)) / np.max(np.abs(lxt)))


def test_the_reference_matches_lxt(case):
    result = ref.block_relevance(case.block, case.hidden, case.relevance_out)
    # the weights were read as the framework uses them
    assert _relative_difference(result.output, case.output_lxt) <= TOLERANCE
    difference = _relative_difference(result.relevance_in, case.relevance_in_lxt)
    assert difference <= TOLERANCE, f"{case.name}: max |R_ref - R_lxt| / max |R_lxt| = {difference:.3g}"


def test_the_reference_matches_lxt_as_shipped_to_float32_rounding(llama_as_shipped):
    case = llama_as_shipped
    result = ref.block_relevance(case.block, case.hidden, case.relevance_out)
    difference = _relative_difference(result.relevance_in, case.relevance_in_lxt)
    assert difference <= TOLERANCE_FLOAT32_NORM, f"max |R_ref - R_lxt| / max |R_lxt| = {difference:.3g}"


def _softmax_without_its_sum_term(scores, weights, relevance, account):
    relevance_in = scores * relevance
    account.add("softmax", relevance_in - relevance)
    return relevance_in


FAULTS = {
    "values take all": lambda m: m.setitem(ref.SHARES, "values", 1.0),
    "queries take all": lambda m: m.setitem(ref.SHARES, "queries", 1.0),
    "gate takes all": lambda m: m.setitem(ref.SHARES, "gate", 1.0),
    "softmax without -s_i * sum_j R_j": lambda m: m.setattr(ref, "_softmax_rule", _softmax_without_its_sum_term),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_wrong_rule_disagrees_with_lxt(case, fault, monkeypatch):
    if fault == "gate takes all" and isinstance(case.block, ref.GPT2Block):
        pytest.skip("GPT-2's MLP has no gated product")
    FAULTS[fault](monkeypatch)
    result = ref.block_relevance(case.block, case.hidden, case.relevance_out)
    difference = _relative_difference(result.relevance_in, case.relevance_in_lxt)
    # caught by the looser tolerance too, and the accounting does not notice: only the comparison can
    assert difference > TOLERANCE_FLOAT32_NORM, f"{case.name}, {fault}: {difference:.3g}"
    _assert_accounting(result, case.relevance_out)


def _assert_accounting(result, relevance_out):
    scale = float(np.sum(np.abs(relevance_out)))
    totals = result.totals
    assert totals["in"] == pytest.approx(float(np.sum(result.relevance_in)), abs=ACCOUNTING * scale)
    assert totals["in"] - totals["out"] == pytest.approx(sum(result.mechanisms.values()), abs=ACCOUNTING * scale)
    for part in ("attention", "mlp"):
        change = totals[f"{part}_in"] - totals[f"{part}_out"]
        assert change == pytest.approx(sum(result.parts[part].values()), abs=ACCOUNTING * scale), part


def test_the_accounting_identity_holds(case):
    result = ref.block_relevance(case.block, case.hidden, case.relevance_out)
    _assert_accounting(result, case.relevance_out)
    assert set(result.mechanisms) == set(ref.MECHANISMS)


def test_the_mechanisms_add_up_to_lxts_change(case):
    result = ref.block_relevance(case.block, case.hidden, case.relevance_out)
    scale = float(np.sum(np.abs(case.relevance_out)))
    lxt_change = float(np.sum(case.relevance_in_lxt) - np.sum(case.relevance_out))
    assert sum(result.mechanisms.values()) == pytest.approx(lxt_change, abs=1e-8 * scale)
    # what 'rest' holds is the stabilisers and LXT's 1e-10 in the identity rule
    assert abs(result.mechanisms["rest"]) < 1e-8 * scale
    assert abs(result.mechanisms["softmax"]) > 1e-3 * scale
    if case.name == "llama":
        # no biases: the softmax carries the whole change
        assert result.mechanisms["bias"] == 0.0
        assert result.mechanisms["softmax"] == pytest.approx(lxt_change, abs=1e-8 * scale)
    else:
        assert abs(result.mechanisms["bias"]) > 1e-3 * scale


def test_lxt_patches_are_undone(case):
    assert modeling_llama.LlamaRMSNorm.forward.__module__ == modeling_llama.__name__
    assert modeling_llama.LlamaMLP.forward.__module__ == modeling_llama.__name__
    assert modeling_llama.eager_attention_forward.__module__ == modeling_llama.__name__
    assert modeling_gpt2.GPT2MLP.forward.__module__ == modeling_gpt2.__name__
    assert modeling_gpt2.eager_attention_forward.__module__ == modeling_gpt2.__name__
    assert torch.nn.LayerNorm.forward.__module__ == torch.nn.LayerNorm.__module__
    assert torch.nn.Dropout.forward.__module__ == torch.nn.Dropout.__module__
    for module in (modeling_llama, modeling_gpt2):
        assert all(f.__module__ != "lxt.efficient.patches" for f in module.ALL_ATTENTION_FUNCTIONS.values())
