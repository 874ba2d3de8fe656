"""LXT's relevance through each transformer block against the numpy reference of AttnLRP's rules.

The tracker (pytorch/layers.py) holds each block's input, output and the gradient at both; the relevance at
the block's output (output x gradient for LXT's efficient rules, the gradient itself for its explicit ones)
goes through the reference's block (reference/attention.py: the rules written out in float64, independent of
LXT and torch), and the relevance it hands to the block's input is compared with LXT's, per sample relative to
the largest value (checks/comparison.py). A wrong share in the attention's products, a softmax rule without
its second term or a norm that passes gradient through its variance conserves or not, but shows here.

Covers the blocks the reference has: Llama's (and Qwen2's, the same with biases) and GPT-2's (with the
activation ``gelu_new``), under AttnLRP (``lxt.attnlrp``, ``lxt.explicit``). Anything else is skipped by the
check with one line.
"""

from __future__ import annotations

import dataclasses
import time

from ..base.lazy import np
from ..checks.comparison import FORWARD_RTOL, ReferenceComparison, compare
from ..pytorch.runtime import torch
from ..reference import attention as ref

BLOCKS = {"LlamaDecoderLayer": "llama", "Qwen2DecoderLayer": "llama", "GPT2Block": "gpt2"}
RULES = ("lxt.attnlrp", "lxt.explicit")
SILU = {"SiLU", "SiLUActivation"}


def block_comparison(model, rule, tracker, batch: np.ndarray, explicit: bool) -> ReferenceComparison:
    tolerance = rule.reference_tolerance
    if rule.analyzer not in RULES:
        return ReferenceComparison(tolerance, skipped=f"the block reference is AttnLRP's; {rule.analyzer} is not")
    calls = [c for c in tracker.calls if c.name.rsplit(".", 1)[-1].isdigit() and c.output is not None]
    kinds = {BLOCKS.get(c.cls) for c in calls}
    if not calls or None in kinds:
        found = sorted({c.cls for c in calls}) or ["none"]
        return ReferenceComparison(
            tolerance,
            skipped=f"no numpy reference for the blocks of {model.name} ({', '.join(found)}; it has Llama's, Qwen2's and GPT-2's)",
        )
    if "gpt2" in kinds and getattr(model.config, "activation_function", "gelu_new") not in (
        "gelu_new",
        "gelu_pytorch_tanh",
    ):
        return ReferenceComparison(
            tolerance, skipped=f"no numpy reference for GPT-2's {model.config.activation_function}"
        )
    other = sorted({type(c.module.mlp.act_fn).__name__ for c in calls if "llama" == BLOCKS[c.cls]} - SILU)
    if other:
        return ReferenceComparison(
            tolerance, skipped=f"no numpy reference for the MLP activation {other[0]} (it has SiLU)"
        )
    start = time.perf_counter()
    mask = batch[:, 1] if model.kind == "text" else np.ones((len(batch), 1), dtype=np.int64)
    # LXT's explicit rules stabilise every denominator with 1e-8 and pass an activation's relevance exactly;
    # the efficient ones divide by the exact denominators and by the activation's input plus 1e-10.
    settings = {"stabilizer": 1e-8, "identity_epsilon": 0.0} if explicit else {}
    differences = []
    for call in calls:
        hidden = call.inputs[0].detach().double().cpu().numpy()
        relevance_out = _relevance(call.output, call.grad_out, explicit)
        relevance_in = _relevance(call.inputs[0], call.grads_in[0], explicit)
        block = _block(call.module, model, hidden.shape[1])
        expected, forward = [], []
        for sample in range(len(hidden)):
            kept = _attends(mask[sample], hidden.shape[1])
            shaped = dataclasses.replace(block, attention=dataclasses.replace(block.attention, mask=kept))
            found = ref.block_relevance(shaped, hidden[sample], relevance_out[sample], **settings)
            expected.append(found.relevance_in)
            forward.append(found.output)
        outputs = call.output.detach().double().cpu().numpy()
        scale = np.max(np.abs(outputs))
        if np.max(np.abs(np.asarray(forward) - outputs)) > FORWARD_RTOL * max(scale, 1e-30):
            return ReferenceComparison(
                tolerance,
                problem=f"the numpy reference's block '{call.name}' ({call.cls}) does not compute the model's output: "
                "it misreads this model, report it with the model's config",
            )
        differences.append(
            compare(
                f"block '{call.name}' ({call.cls}): relevance handed to its input",
                np.asarray(expected),
                relevance_in,
                tolerance,
                implementation="lxt",
            )
        )
    differences.reverse()  # output first, as the per-layer table
    return ReferenceComparison(tolerance, layers=differences, seconds=time.perf_counter() - start)


def _relevance(value, grad, explicit: bool) -> np.ndarray:
    grad = grad.detach().double()
    return (grad if explicit else value.detach().double() * grad).cpu().numpy()


def _attends(kept: np.ndarray, length: int) -> np.ndarray:
    """Causal attention to the tokens the mask keeps (a query on padding attends itself: its output is unused)."""
    allowed = np.tril(np.ones((length, length), dtype=bool)) & (np.asarray(kept[:length]) == 1)[None, :]
    allowed[np.arange(length), np.arange(length)] |= ~allowed.any(axis=1)
    return allowed


def _array(tensor) -> np.ndarray:
    return tensor.detach().double().cpu().numpy()


def _linear(module) -> ref.Linear:
    return ref.Linear(_array(module.weight), None if module.bias is None else _array(module.bias))


def _block(layer, model, length: int):
    if type(layer).__name__ == "GPT2Block":
        return gpt2_block(layer)
    t = torch()
    probe = t.zeros(1, length, 1, dtype=t.float32, device=model.device)
    cos, sin = model.module.base_model.rotary_emb(probe, t.arange(length, device=model.device)[None])
    return llama_block(layer, cos[0], sin[0])


def llama_block(layer, cos, sin) -> ref.LlamaBlock:
    """A Llama (or Qwen2) decoder layer's weights as the reference's block; ``cos``/``sin`` (tokens x head_dim)
    its rotary embedding."""
    attention = layer.self_attn
    return ref.LlamaBlock(
        input_layernorm=ref.RMSNorm(_array(layer.input_layernorm.weight), layer.input_layernorm.variance_epsilon),
        attention=ref.Attention(
            q=_linear(attention.q_proj),
            k=_linear(attention.k_proj),
            v=_linear(attention.v_proj),
            o=_linear(attention.o_proj),
            num_heads=attention.config.num_attention_heads,
            num_kv_heads=attention.config.num_key_value_heads,
            head_dim=attention.head_dim,
            cos=_array(cos),
            sin=_array(sin),
            scaling=attention.scaling,
        ),
        post_attention_layernorm=ref.RMSNorm(
            _array(layer.post_attention_layernorm.weight), layer.post_attention_layernorm.variance_epsilon
        ),
        gate=_linear(layer.mlp.gate_proj),
        up=_linear(layer.mlp.up_proj),
        down=_linear(layer.mlp.down_proj),
    )


def gpt2_block(layer) -> ref.GPT2Block:
    """A GPT-2 block's weights (Conv1D layout) as the reference's block."""

    def conv1d(module):
        return ref.Linear.from_conv1d(_array(module.weight), _array(module.bias))

    def layer_norm(module):
        return ref.LayerNorm(_array(module.weight), _array(module.bias), module.eps)

    return ref.GPT2Block(
        ln_1=layer_norm(layer.ln_1),
        attention=ref.Attention(
            qkv=conv1d(layer.attn.c_attn),
            o=conv1d(layer.attn.c_proj),
            num_heads=layer.attn.num_heads,
            head_dim=layer.attn.head_dim,
        ),
        ln_2=layer_norm(layer.ln_2),
        fc=conv1d(layer.mlp.c_fc),
        proj=conv1d(layer.mlp.c_proj),
    )
