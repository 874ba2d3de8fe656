"""An independent float64 numpy reference of one transformer block under AttnLRP, and its leak accounting.

The rules are those of AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation
for Transformers", ICML 2024), in the conventions of LXT's efficient implementation (lxt 2.1,
lxt/efficient/patches.py and rules.py), which computes them as gradient x input:

- linear layers (projections, the residual additions, rotary position embedding, which is linear in q and k
  given cos/sin): the epsilon rule R_i = x_i * sum_j w_ji R_j / stab(z_j) with z_j = sum_i w_ji x_i + b_j; the
  bias keeps its share b_j R_j / stab(z_j). LXT's epsilon is implicit (gradient x input is the z rule), so the
  stabiliser here is tiny (STABILIZER, with the sign of z);
- elementwise nonlinearities (SiLU, GELU): the identity rule, relevance passes unchanged; LXT's
  identity_rule_implicit divides by ``input + 1e-10``, so R_in = R_out * x / (x + 1e-10) (identity_epsilon);
- the bilinear products Q.K^T and A.V and the gated product of the MLP: the uniform rule, each operand takes
  half (epsilon rule over the summed index first, Proposition 3.3); LXT divides the gradient of the values by
  2, of the gated product by 2, and of the queries and keys by 4 (half for the product, half because the
  attention weights are the other operand of A.V);
- softmax: its Taylor decomposition at the input (Proposition 3.1), R_in_i = x_i * (R_out_i - s_i * sum_j
  R_out_j), as lxt/explicit/functional.py's softmax_fn and gradient x input through softmax give; x is the
  score before the mask, whose masked entries (s_i = 0) receive nothing;
- RMSNorm and LayerNorm: the identity rule on the normalisation, written as the epsilon rule of the map with
  the variance held constant (LXT stops its gradient); LayerNorm's mean subtraction is linear and its bias
  keeps its share.

The propagation is written out rule by rule (ratios R / stab(z) pushed through the transposed maps), not as
a gradient, so that it is an independent computation of what LXT computes with autograd.

    attention = Attention(o=Linear(w_o), q=Linear(w_q), k=Linear(w_k), v=Linear(w_v), num_heads=4, num_kv_heads=2,
                          head_dim=8, cos=cos, sin=sin)
    block = LlamaBlock(input_layernorm=RMSNorm(w_1, 1e-6), attention=attention, post_attention_layernorm=..., ...)
    result = block_relevance(block, hidden_states, relevance_out)
    result.relevance_in, result.totals["attention_in"], result.mechanisms["softmax"], ...

Accounting identity, per block: sum(relevance_in) - sum(relevance_out) == sum(mechanisms.values()), and per
part: totals["attention_in"] - totals["attention_out"] == sum(parts["attention"].values()) (likewise "mlp";
"residual" holds the two residual additions). Mechanisms (MECHANISMS): bias (absorbed by biases, negative =
relevance lost), softmax (what the softmax's Taylor term does not conserve), rest (the stabilisers of the
denominators, the identity rule's epsilon, and uniform shares that do not add up to one, which only a changed
SHARES has).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base.lazy import np

MECHANISMS = ("bias", "softmax", "rest")
PARTS = ("attention", "mlp", "residual")
# Small enough to leave float64 ratios as they are, there only to keep an exact zero from dividing.
STABILIZER = 1e-15
LXT_IDENTITY_EPSILON = 1e-10
_SQRT_2_OVER_PI = 0.7978845608028654
# The uniform rule's share of each operand of the three products; named, so that a test can break one and see
# the comparison with LXT fail.
SHARES = {"attention_weights": 0.5, "values": 0.5, "queries": 0.5, "keys": 0.5, "gate": 0.5, "up": 0.5}


@dataclass(frozen=True)
class Linear:
    """y = x @ weight.T + bias, weight (out, in) as torch.nn.Linear keeps it."""

    weight: np.ndarray
    bias: np.ndarray | None = None

    @classmethod
    def from_conv1d(cls, weight, bias=None) -> Linear:
        """GPT-2's Conv1D: y = x @ weight + bias, weight (in, out)."""
        return cls(np.asarray(weight, dtype=np.float64).T, None if bias is None else np.asarray(bias, np.float64))

    def __call__(self, x):
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


@dataclass(frozen=True)
class RMSNorm:
    weight: np.ndarray
    eps: float = 1e-6


@dataclass(frozen=True)
class LayerNorm:
    weight: np.ndarray
    bias: np.ndarray | None = None
    eps: float = 1e-5


@dataclass(frozen=True)
class Attention:
    """Multi-head self-attention. Separate q/k/v projections (Llama) or one fused ``qkv`` (GPT-2's c_attn,
    split into q, k, v in that order); grouped-query attention when num_kv_heads < num_heads (kv head h //
    (num_heads // num_kv_heads) serves head h, as transformers' repeat_kv). ``cos``/``sin`` (seq, head_dim):
    rotary position embedding as transformers' apply_rotary_pos_emb (rotate_half), None for none.
    ``mask`` (seq, seq) bool, True where query i attends key j; None: causal."""

    o: Linear
    num_heads: int
    head_dim: int
    num_kv_heads: int | None = None
    q: Linear | None = None
    k: Linear | None = None
    v: Linear | None = None
    qkv: Linear | None = None
    cos: np.ndarray | None = None
    sin: np.ndarray | None = None
    mask: np.ndarray | None = None
    scaling: float | None = None

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads


@dataclass(frozen=True)
class LlamaBlock:
    """A Llama decoder layer: x + attn(rms1(x)), then h + down(silu(gate(rms2(h))) * up(rms2(h)))."""

    input_layernorm: RMSNorm
    attention: Attention
    post_attention_layernorm: RMSNorm
    gate: Linear
    up: Linear
    down: Linear


@dataclass(frozen=True)
class GPT2Block:
    """A GPT-2 block: x + attn(ln_1(x)), then h + c_proj(gelu_new(c_fc(ln_2(h))))."""

    ln_1: LayerNorm
    attention: Attention
    ln_2: LayerNorm
    fc: Linear
    proj: Linear


@dataclass
class BlockRelevance:
    """relevance_in (seq, hidden) at the block's input; output: the block's forward output; totals: summed
    relevance at out, mlp_out, mlp_in, attention_out, attention_in, in (a sublayer's input is its norm's
    input, the part of the relevance that leaves the residual stream into it); mechanisms: the block's change
    in relevance by mechanism, parts: the same per part (attention with its norm, mlp with its norm, the
    residual additions)."""

    relevance_in: np.ndarray
    output: np.ndarray
    totals: dict = field(default_factory=dict)
    mechanisms: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)


class _Account:
    def __init__(self):
        self.parts = {part: dict.fromkeys(MECHANISMS, 0.0) for part in PARTS}
        self.part = "attention"

    def add(self, mechanism: str, value) -> None:
        self.parts[self.part][mechanism] += float(np.sum(value))


def _stab(z, stabilizer: float):
    return z + stabilizer * np.where(z >= 0, 1.0, -1.0)


# --- forward pieces -------------------------------------------------------------------------------------------


def _rms_scale(norm: RMSNorm, x):
    return 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + norm.eps)


def _layer_norm_parts(norm: LayerNorm, x):
    centred = x - np.mean(x, axis=-1, keepdims=True)
    std = np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + norm.eps)
    return centred, std


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


def _rotary_matrices(cos, sin):
    """M (seq, head_dim, head_dim) with rope(q)_t = M_t @ q_t: q * cos + rotate_half(q) * sin."""
    dim = cos.shape[-1]
    half = dim // 2
    rotate = np.zeros((dim, dim))
    rotate[np.arange(half), np.arange(half) + half] = -1.0
    rotate[np.arange(half) + half, np.arange(half)] = 1.0
    return cos[:, :, None] * np.eye(dim) + sin[:, :, None] * rotate


def _allowed(attention: Attention, seq: int):
    if attention.mask is not None:
        return np.asarray(attention.mask, dtype=bool)
    return np.tril(np.ones((seq, seq), dtype=bool))


# --- rules ----------------------------------------------------------------------------------------------------


def _linear_rule(layer: Linear, x, relevance, stabilizer: float, account: _Account):
    z = layer(x)
    d = _stab(z, stabilizer)
    ratio = relevance / d
    if layer.bias is not None:
        account.add("bias", -layer.bias * ratio)
    account.add("rest", (z - d) * ratio)
    return x * (ratio @ layer.weight)


def _rms_norm_rule(norm: RMSNorm, x, relevance, stabilizer: float, account: _Account):
    scale = norm.weight * _rms_scale(norm, x)
    y = x * scale
    d = _stab(y, stabilizer)
    account.add("rest", (y - d) * relevance / d)
    return x * scale * relevance / d


def _layer_norm_rule(norm: LayerNorm, x, relevance, stabilizer: float, account: _Account):
    centred, std = _layer_norm_parts(norm, x)
    y = centred * norm.weight / std + (0.0 if norm.bias is None else norm.bias)
    d = _stab(y, stabilizer)
    ratio = relevance / d
    if norm.bias is not None:
        account.add("bias", -norm.bias * ratio)
    account.add("rest", (y - d) * ratio)
    # the centring matrix I - 1/n is symmetric: its transpose subtracts the mean
    g = ratio * norm.weight / std
    return x * (g - np.mean(g, axis=-1, keepdims=True))


def _sum_rule(parts, relevance, stabilizer: float, account: _Account):
    total = sum(parts)
    d = _stab(total, stabilizer)
    account.add("rest", (total - d) * relevance / d)
    return [p * relevance / d for p in parts]


def _identity_rule(x, relevance, identity_epsilon: float, account: _Account):
    relevance_in = relevance * (x / (x + identity_epsilon))
    account.add("rest", relevance_in - relevance)
    return relevance_in


def _product_rule(relevance, shares: tuple, account: _Account):
    """Elementwise a * b, uniform rule: each operand its share (half)."""
    account.add("rest", (shares[0] + shares[1] - 1.0) * relevance)
    return shares[0] * relevance, shares[1] * relevance


def _matmul_rule(a, b, relevance, shares: tuple, stabilizer: float, account: _Account):
    """c = a @ b over the last two axes: epsilon rule over the summed index, then the uniform rule on each
    product a_ik b_kj (each operand its share, half)."""
    c = a @ b
    d = _stab(c, stabilizer)
    ratio = relevance / d
    account.add("rest", (c - d) * ratio + (shares[0] + shares[1] - 1.0) * c * ratio)
    relevance_a = shares[0] * a * (ratio @ np.swapaxes(b, -1, -2))
    relevance_b = shares[1] * b * (np.swapaxes(a, -1, -2) @ ratio)
    return relevance_a, relevance_b


def _softmax_rule(scores, weights, relevance, account: _Account):
    """Taylor decomposition of softmax at its input (the score before the mask)."""
    relevance_in = scores * (relevance - weights * np.sum(relevance, axis=-1, keepdims=True))
    account.add("softmax", relevance_in - relevance)
    return relevance_in


def _rotary_rule(matrices, x, relevance, stabilizer: float, account: _Account):
    """x (heads, seq, head_dim) -> M_t @ x_t: the epsilon rule of a linear map without bias."""
    y = np.einsum("toi,hti->hto", matrices, x)
    d = _stab(y, stabilizer)
    ratio = relevance / d
    account.add("rest", (y - d) * ratio)
    return x * np.einsum("toi,hto->hti", matrices, ratio)


# --- attention ------------------------------------------------------------------------------------------------


def _heads(x, heads: int, head_dim: int):
    return x.reshape(x.shape[0], heads, head_dim).transpose(1, 0, 2)


def _merge(x):
    return x.transpose(1, 0, 2).reshape(x.shape[1], -1)


def _projections(attention: Attention, x):
    if attention.qkv is not None:
        return np.split(attention.qkv(x), 3, axis=-1)
    assert attention.q is not None and attention.k is not None and attention.v is not None  # one of the two forms
    return attention.q(x), attention.k(x), attention.v(x)


def _attention_forward(attention: Attention, x):
    heads, kv_heads, dim = attention.num_heads, attention.kv_heads, attention.head_dim
    q, k, v = _projections(attention, x)
    q, k, v = _heads(q, heads, dim), _heads(k, kv_heads, dim), _heads(v, kv_heads, dim)
    rotary = None
    if attention.cos is not None:
        rotary = _rotary_matrices(np.asarray(attention.cos), np.asarray(attention.sin))
        q_rot = np.einsum("toi,hti->hto", rotary, q)
        k_rot = np.einsum("toi,hti->hto", rotary, k)
    else:
        q_rot, k_rot = q, k
    groups = heads // kv_heads
    k_rep, v_rep = np.repeat(k_rot, groups, axis=0), np.repeat(v, groups, axis=0)
    scaling = attention.scaling if attention.scaling is not None else dim**-0.5
    scores = (q_rot * scaling) @ np.swapaxes(k_rep, -1, -2)
    allowed = _allowed(attention, x.shape[0])
    shifted = np.where(allowed, scores, -np.inf)
    shifted = shifted - np.max(shifted, axis=-1, keepdims=True)
    exp = np.where(allowed, np.exp(shifted), 0.0)
    weights = exp / np.sum(exp, axis=-1, keepdims=True)
    context = weights @ v_rep
    merged = _merge(context)
    return dict(
        q=q,
        k=k,
        v=v,
        rotary=rotary,
        q_rot=q_rot,
        k_rot=k_rot,
        k_rep=k_rep,
        v_rep=v_rep,
        scaling=scaling,
        scores=scores,
        weights=weights,
        merged=merged,
        out=attention.o(merged),
    )


def _attention_rule(attention: Attention, x, cache: dict, relevance, stabilizer: float, account: _Account):
    heads, kv_heads, dim = attention.num_heads, attention.kv_heads, attention.head_dim
    groups = heads // kv_heads
    relevance_merged = _linear_rule(attention.o, cache["merged"], relevance, stabilizer, account)
    relevance_context = _heads(relevance_merged, heads, dim)
    relevance_weights, relevance_v_rep = _matmul_rule(
        cache["weights"],
        cache["v_rep"],
        relevance_context,
        (SHARES["attention_weights"], SHARES["values"]),
        stabilizer,
        account,
    )
    relevance_scores = _softmax_rule(cache["scores"], cache["weights"], relevance_weights, account)
    # the scaling is one more linear factor of the product, so it goes with q
    relevance_q_rot, relevance_k_rep_t = _matmul_rule(
        cache["q_rot"] * cache["scaling"],
        np.swapaxes(cache["k_rep"], -1, -2),
        relevance_scores,
        (SHARES["queries"], SHARES["keys"]),
        stabilizer,
        account,
    )
    relevance_k_rot = np.swapaxes(relevance_k_rep_t, -1, -2).reshape(kv_heads, groups, *relevance_q_rot.shape[1:])
    relevance_k_rot = relevance_k_rot.sum(axis=1)
    relevance_v = relevance_v_rep.reshape(kv_heads, groups, *relevance_v_rep.shape[1:]).sum(axis=1)
    if cache["rotary"] is not None:
        relevance_q = _rotary_rule(cache["rotary"], cache["q"], relevance_q_rot, stabilizer, account)
        relevance_k = _rotary_rule(cache["rotary"], cache["k"], relevance_k_rot, stabilizer, account)
    else:
        relevance_q, relevance_k = relevance_q_rot, relevance_k_rot
    parts = [_merge(relevance_q), _merge(relevance_k), _merge(relevance_v)]
    if attention.qkv is not None:
        return _linear_rule(attention.qkv, x, np.concatenate(parts, axis=-1), stabilizer, account)
    layers = [layer for layer in (attention.q, attention.k, attention.v) if layer is not None]
    return sum(_linear_rule(layer, x, part, stabilizer, account) for layer, part in zip(layers, parts))


# --- blocks ---------------------------------------------------------------------------------------------------


def block_relevance(
    block: LlamaBlock | GPT2Block,
    hidden_states,
    relevance_out,
    *,
    stabilizer: float = STABILIZER,
    identity_epsilon: float = LXT_IDENTITY_EPSILON,
) -> BlockRelevance:
    """Relevance at the input of one block (hidden_states (seq, hidden), float64) for ``relevance_out`` at its
    output, with the totals and mechanisms of BlockRelevance. ``identity_epsilon``: 0 for the identity rule
    itself, LXT's 1e-10 (default) for what LXT computes."""
    x = np.asarray(hidden_states, dtype=np.float64)
    relevance_out = np.asarray(relevance_out, dtype=np.float64)
    account = _Account()
    norm_1: RMSNorm | LayerNorm
    norm_2: RMSNorm | LayerNorm
    if isinstance(block, LlamaBlock):
        norm_1, norm_2 = block.input_layernorm, block.post_attention_layernorm
    else:
        norm_1, norm_2 = block.ln_1, block.ln_2

    def norm_forward(norm, h):
        if isinstance(norm, RMSNorm):
            return norm.weight * h * _rms_scale(norm, h)
        centred, std = _layer_norm_parts(norm, h)
        return centred * norm.weight / std + (0.0 if norm.bias is None else norm.bias)

    def norm_rule(norm, h, relevance):
        rule = _rms_norm_rule if isinstance(norm, RMSNorm) else _layer_norm_rule
        return rule(norm, h, relevance, stabilizer, account)

    normed_1 = norm_forward(norm_1, x)
    cache = _attention_forward(block.attention, normed_1)
    hidden = x + cache["out"]
    normed_2 = norm_forward(norm_2, hidden)
    if isinstance(block, LlamaBlock):
        gate = block.gate(normed_2)
        activated = _silu(gate)
        up = block.up(normed_2)
        mlp_out = block.down(activated * up)
    else:
        fc = block.fc(normed_2)
        activated = _gelu_new(fc)
        mlp_out = block.proj(activated)
    output = hidden + mlp_out

    account.part = "residual"
    relevance_hidden, relevance_mlp_out = _sum_rule([hidden, mlp_out], relevance_out, stabilizer, account)
    account.part = "mlp"
    if isinstance(block, LlamaBlock):
        relevance_product = _linear_rule(block.down, activated * up, relevance_mlp_out, stabilizer, account)
        relevance_activated, relevance_up = _product_rule(relevance_product, (SHARES["gate"], SHARES["up"]), account)
        relevance_gate = _identity_rule(gate, relevance_activated, identity_epsilon, account)
        relevance_normed_2 = _linear_rule(block.gate, normed_2, relevance_gate, stabilizer, account)
        relevance_normed_2 = relevance_normed_2 + _linear_rule(block.up, normed_2, relevance_up, stabilizer, account)
    else:
        relevance_activated = _linear_rule(block.proj, activated, relevance_mlp_out, stabilizer, account)
        relevance_fc = _identity_rule(fc, relevance_activated, identity_epsilon, account)
        relevance_normed_2 = _linear_rule(block.fc, normed_2, relevance_fc, stabilizer, account)
    relevance_mlp_in = norm_rule(norm_2, hidden, relevance_normed_2)
    relevance_hidden = relevance_hidden + relevance_mlp_in

    account.part = "residual"
    relevance_x, relevance_attention_out = _sum_rule([x, cache["out"]], relevance_hidden, stabilizer, account)
    account.part = "attention"
    relevance_normed_1 = _attention_rule(block.attention, normed_1, cache, relevance_attention_out, stabilizer, account)
    relevance_attention_in = norm_rule(norm_1, x, relevance_normed_1)
    relevance_in = relevance_x + relevance_attention_in

    totals = {
        "out": float(np.sum(relevance_out)),
        "mlp_out": float(np.sum(relevance_mlp_out)),
        "mlp_in": float(np.sum(relevance_mlp_in)),
        "attention_out": float(np.sum(relevance_attention_out)),
        "attention_in": float(np.sum(relevance_attention_in)),
        "in": float(np.sum(relevance_in)),
    }
    mechanisms = {m: sum(account.parts[p][m] for p in PARTS) for m in MECHANISMS}
    return BlockRelevance(relevance_in, output, totals, mechanisms, account.parts)


def block_forward(block: LlamaBlock | GPT2Block, hidden_states):
    """The block's output, for checking that weights were read as the framework uses them."""
    x = np.asarray(hidden_states, dtype=np.float64)
    return block_relevance(block, x, np.zeros_like(x)).output
