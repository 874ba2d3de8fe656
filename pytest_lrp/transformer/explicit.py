"""AttnLRP with ``lxt.explicit``'s rules for transformers' Llama models, in LXT's patch-map format.

``lxt.explicit`` computes relevance with custom autograd Functions (``lxt/explicit/functional.py``) whose
backward returns the relevance itself: after ``logit.backward(logit)`` the relevance of the input embeddings is
``inputs_embeds.grad``. Every operation between the embeddings and the logit has to be one of those Functions,
or a reshaping/selection whose gradient moves relevance unchanged; a plain ``torch`` operation would pass its
gradient on as if it were relevance. LXT rewrites whole modeling files for that (``lxt/explicit/models/`` in its
GitHub repository), but the PyPI wheel of lxt 2.1 does not contain them, so the explicit rules could not be run
on a Hugging Face model with the wheel alone. This module writes the forwards that matter as patches, in the
format of ``lxt.efficient``'s maps ({class: ``patch(class) -> bool``}), so that
``pytest_lrp.transformer.patching.lxt_patched`` applies and undoes them like LXT's own maps. The rules are
AttnLRP's, as in the repository's ``lxt/explicit/models/llama.py``; with exact arithmetic they give what
``lxt.efficient.models.llama.attnLRP`` gives as input x gradient, up to the epsilons of the explicit rules.

Written for lxt 2.1 and transformers 4.52 (the forwards follow ``transformers.models.llama.modeling_llama``'s
signatures and return values of that release). Covers the Llama family: ``LlamaModel``, ``LlamaForCausalLM``,
``LlamaForSequenceClassification`` (the latter's pooling of one token is a selection). Attention is computed
the eager way whatever ``config._attn_implementation`` says, for the additive 4-D masks of "eager" and "sdpa"
(and sdpa's ``None``); flash and flex attention masks are refused. Needs torch, transformers and lxt: import
this module only where they are installed.
"""

from __future__ import annotations

import os
from functools import partial

os.environ.setdefault("USE_TF", "0")  # as runtime.library: transformers would import TensorFlow otherwise

import torch
from lxt.efficient.patches import patch_method
from lxt.explicit.functional import add2, linear_epsilon, matmul, mul2, rms_norm_identity, softmax
from lxt.explicit.rules import identity
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaMLP,
    LlamaRMSNorm,
    repeat_kv,
)


def explicit_patch_map(model) -> dict | None:
    """The explicit AttnLRP patch map for a transformers Llama model; None for any other model.

    Only a model whose own class is Llama's qualifies: a model that merely contains a Llama (a vision-language
    model, say) has operations outside these patches, which would pass gradients off as relevance.
    ``torch.nn.Linear`` is patched for the whole process (the head is a plain Linear); ``lxt_patched`` restores it.
    """
    if type(model).__module__ != modeling_llama.__name__:
        return None
    return {
        torch.nn.Linear: partial(patch_method, _linear_forward),
        LlamaRMSNorm: partial(patch_method, _rms_norm_forward),
        LlamaMLP: partial(patch_method, _mlp_forward),
        LlamaAttention: partial(patch_method, _attention_forward),
        LlamaDecoderLayer: partial(patch_method, _decoder_layer_forward),
    }


def _linear_forward(self, input):
    # epsilon 1e-8 as the repository's explicit Llama (rules.EpsilonRule); functional's default 1e-6 is not
    # negligible beside the small outputs of freshly initialised layers.
    return linear_epsilon(input, self.weight, self.bias, epsilon=1e-8)


def _rms_norm_forward(self, hidden_states):
    return rms_norm_identity(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self, x):
    # Identity rule through the elementwise activation, uniform rule (half each) on the gate x up product.
    gate = identity(self.act_fn, self.gate_proj(x))
    return self.down_proj(mul2(gate, self.up_proj(x)))


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    # mul2 with a constant is the identity rule: relevance keeps its sign where the gradient of -x2 would flip it.
    return torch.cat((mul2(x2, -1), x1), dim=-1)


def _rotary(x, cos, sin):
    # Linear in x for fixed cos/sin: mul2 with the (detached) constants passes relevance on, add2 splits it by
    # the epsilon rule, which together is the epsilon rule of the whole rotation.
    cos, sin = cos.unsqueeze(1).detach(), sin.unsqueeze(1).detach()
    return add2(mul2(x, cos), mul2(_rotate_half(x), sin))


def _attention_forward(
    self, hidden_states, position_embeddings, attention_mask, past_key_value=None, cache_position=None, **kwargs
):
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

    cos, sin = position_embeddings
    query, key = _rotary(query, cos, sin), _rotary(key, cos, sin)
    if past_key_value is not None:
        cache_kwargs = {"sin": sin, "cos": cos, "cache_position": cache_position}
        key, value = past_key_value.update(key, value, self.layer_idx, cache_kwargs)

    # repeat_kv copies heads (expand + reshape): autograd sums the copies' relevance, which is LRP's rule for a copy.
    key = repeat_kv(key, self.num_key_value_groups)
    value = repeat_kv(value, self.num_key_value_groups)

    scores = mul2(matmul(query, key.transpose(2, 3)), self.scaling)
    q_len, k_len = scores.shape[-2:]
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, :, :k_len]
    elif attention_mask is None and q_len > 1:
        # sdpa leaves the causal mask to its kernel (is_causal) when it can; here it has to be written out.
        min_value = torch.finfo(scores.dtype).min
        attention_mask = torch.full((q_len, k_len), min_value, dtype=scores.dtype, device=scores.device)
        attention_mask = attention_mask.triu(k_len - q_len + 1)
    elif attention_mask is not None:
        raise NotImplementedError(
            "explicit LRP for Llama needs the additive 4-D attention mask of eager or sdpa attention, not "
            f"{self.config._attn_implementation}'s"
        )
    if attention_mask is not None:
        # The mask is a constant: autograd's pass-through gives the scores all of the relevance (the mask none).
        scores = scores + attention_mask

    # Attention dropout is left out, as lxt.efficient does: the explanation is of the deterministic model.
    weights = softmax(scores, -1, torch.float32).to(query.dtype)
    output = matmul(weights, value).transpose(1, 2).reshape(*input_shape, -1).contiguous()
    return self.o_proj(output), weights


def _decoder_layer_forward(
    self,
    hidden_states,
    attention_mask=None,
    position_ids=None,
    past_key_value=None,
    output_attentions=False,
    use_cache=False,
    cache_position=None,
    position_embeddings=None,
    **kwargs,
):
    # Residual sums split relevance by the epsilon rule (add2); torch's + would hand all of it to both branches.
    attention, weights = self.self_attn(
        hidden_states=self.input_layernorm(hidden_states),
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_value=past_key_value,
        output_attentions=output_attentions,
        use_cache=use_cache,
        cache_position=cache_position,
        position_embeddings=position_embeddings,
        **kwargs,
    )
    hidden_states = add2(hidden_states, attention)
    hidden_states = add2(hidden_states, self.mlp(self.post_attention_layernorm(hidden_states)))
    return (hidden_states, weights) if output_attentions else (hidden_states,)
