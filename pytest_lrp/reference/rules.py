"""The rules for layers with weights, each written as a list of terms, and their accounting.

A term is one ratio of the rule: for every output neuron j

    c_j = sum over pairs (sign * forward(x_variant, w_variant))_j      (what is distributed)
    d_j = c_j + b_j                                                    (its denominator)
    R_i += kappa * sum_j sign * x_variant_i * w_variant_ij * R_j / stab(d_j)

z/epsilon/w_square/flat/z_plus_fast/bounded are one term (kappa 1); alpha-beta is two
(activator kappa alpha, inhibitor kappa -beta). Summing over the inputs gives exactly
R_in_j = sum_T kappa_T * c_Tj / stab(d_Tj) * R_j, and writing c/stab(d) = 1 - b/stab(d)
+ (d - stab(d))/stab(d) splits each neuron's change R_in_j - R_j into

    bias        -kappa * b/stab(d) * R          (also: d == 0 while c != 0, the issue-273 blow-up)
    stabilizer  kappa * (d - stab(d))/stab(d) * R
    unbalanced  (sum of kappa over terms with c != 0) - 1, times R  (alpha-beta neurons with
                no positive or no negative part: alpha R or -beta R instead of R)
    dropped     -R where no term has a contribution (c == 0 everywhere) and no bias holds it
                (z+, bias-free z/epsilon at neurons whose inputs are all zero); with a
                bias in the denominator the same -R counts as bias (b/z = 1).

innvestigate's conventions followed here (relevance_rule.py, 2.1.2):
- safe division: a denominator that is exactly 0 becomes 1e-7 (Keras epsilon), others are
  left alone (z, alpha-beta, w_square, flat, z_plus_fast, bounded, the Add/AveragePooling
  z rule);
- epsilon: d + eps * sign(d) with sign(0) = +1, no safe division;
- alpha-beta with bias: the positive-weights copy of the layer keeps b+ and the
  negative-weights copy b-, and each term adds both copies, so the full bias b = b+ + b-
  enters BOTH the activator and the inhibitor denominator (the paper puts only b+ in the
  activator and b- in the inhibitor, or ignores the bias); inputs are split into x+ and x-,
  so for negative inputs the activator uses x- * w- (still a positive contribution);
- the inhibitor term is not computed when beta == 0;
- z_plus is alpha=1, beta=0 without bias (so negative inputs count with x- * w-);
  z_plus_fast uses the positive weights with the unsplit input x;
- w_square and flat ignore the input: R_i = sum_j w_ij^2 / sum_i' w_i'j^2 * R_j (flat: w = 1),
  with the denominator a forward pass of ones, so a 'same' convolution's border counts only
  the cells inside the image;
- bounded (z^B): c = x.w - low.w+ - high.w-, no bias, low/high are constant inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

KERAS_EPSILON = 1e-7
MECHANISMS = ("bias", "stabilizer", "dropped", "unbalanced", "gradient")


class UnsupportedRule(Exception):
    """An analyzer name or rule option the reference does not implement."""


@dataclass(frozen=True)
class Rule:
    # z, epsilon, w_square, flat, alpha_beta, alpha_beta_x, z_plus_fast, bounded (innvestigate's, and zennit's
    # with a stabilizer); gamma (zennit's), gamma_plain and positive_weights (captum's); see TORCH_RULES below
    kind: str
    bias: bool = True
    epsilon: float = KERAS_EPSILON
    alpha: float = 1.0
    beta: float = 0.0
    low: float = 0.0
    high: float = 1.0
    x_weights: tuple = ()  # alpha_beta_x: (alpha0, alpha1, beta0, beta1)
    # None: innvestigate's safe division; a number: d + stabilizer * sign(d), sign(0) = +1 (zennit, captum)
    stabilizer: float | None = None
    # which part of the bias a term's denominator holds: "full"; "split" (alpha-beta: b+ in the activator, b- in
    # the inhibitor, zennit); "square" (w_square: b^2 beside w^2, zennit)
    bias_part: str = "full"
    gamma: float = 0.25

    @property
    def label(self) -> str:
        nobias = "" if self.bias else ", no bias"
        if self.kind == "epsilon":
            return f"epsilon({self.epsilon:g}{nobias})"
        if self.kind == "alpha_beta":
            return f"alpha_beta({self.alpha:g},{self.beta:g}{nobias})"
        if self.kind == "alpha_beta_x":
            a0, a1, b0, b1 = self.x_weights
            return f"alpha_beta_x({a0:g},{a1:g};{b0:g},{b1:g})"
        if self.kind == "bounded":
            return f"bounded({self.low:g},{self.high:g})"
        if self.kind == "z" and not self.bias:
            return "z(no bias)"
        if self.kind in ("gamma", "gamma_plain"):
            return f"{self.kind}({self.gamma:g}{nobias})"
        return self.kind + nobias


class _Ones:
    """The input of w_square and flat: all ones, so their denominators do not depend on x and
    are computed once per layer, rule and input shape (apply_terms' cache)."""

    def __init__(self, rule: str):
        self.rule = rule

    def any(self):
        return True


ONES = {"w_square": _Ones("w_square"), "flat": _Ones("flat")}


class _NoInput:
    """x- of an input without negative values: apply_terms skips the pairs it is in."""

    def any(self):
        return False


_NO_INPUT = _NoInput()


def _pos(a):
    return np.maximum(a, 0)


def _neg(a):
    return np.minimum(a, 0)


class KernelPart:
    """A function of a large Dense kernel (its positive or negative part, its square, ones), made a slice
    of rows at a time where a product uses it (ops.Dense) instead of as a whole: the parts of a kernel of
    10^8 entries, kept, would hold gigabytes for the whole run; slice by slice they cost little time and
    no memory."""

    ROWS_ENTRIES = 1 << 22  # one slice: 32 MB of float64

    def __init__(self, kernel: np.ndarray, name: str):
        self.kernel, self.name = kernel, name
        self.shape, self.dtype = kernel.shape, kernel.dtype

    def slices(self):
        step = max(1, self.ROWS_ENTRIES // max(1, self.shape[-1]))
        for start in range(0, self.shape[0], step):
            stop = min(start + step, self.shape[0])
            yield start, stop, PARTS[self.name](self.kernel[start:stop])


PARTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "pos": lambda w: np.maximum(w, 0),
    "neg": lambda w: np.minimum(w, 0),
    "square": np.square,
    "ones": np.ones_like,
    # the squares of each, for the rounding bound's variances (float32_bound)
    "pos_square": lambda w: np.square(np.maximum(w, 0)),
    "neg_square": lambda w: np.square(np.minimum(w, 0)),
    "square_square": lambda w: np.square(np.square(w)),
    "ones_square": np.ones_like,
}
# Dense kernels above this many entries get KernelParts; smaller ones keep their parts in the layer's cache.
PART_ENTRIES = 1 << 22


def terms(rule: Rule, x: np.ndarray, kernel: np.ndarray, bias, cache: dict | None = None, z=None):
    """(kappa, [(x_variant, w_variant, sign)], bias_vector_or_None, stabilizer[, mask]) per term.

    A pair's sign is a factor of its product (gamma's 1 + gamma, on a part of the kernel). A term with a mask
    (zennit's gamma: one term where the layer's output ``z`` is positive, another where it is negative)
    applies to the output neurons where the mask is true only.

    The kernel variant of a pair is single-signed (a part, squares, ones) or the kernel itself;
    ``_absolute_pieces`` turns either into |w| for the rounding bound (see apply_terms).

    ``cache`` keeps the kernel's positive and negative parts between calls (most rules use
    them); squares and ones are cheap to make again and would double the memory. A large
    Dense kernel's parts are KernelParts, made where they are used."""
    cache = {} if cache is None else cache
    large = kernel.ndim == 2 and kernel.size > PART_ENTRIES

    def variant(name, keep=True):
        if large:
            return KernelPart(kernel, name)
        if not keep:
            return PARTS[name](kernel)
        if name not in cache:
            cache[name] = PARTS[name](kernel)
        return cache[name]

    b = bias if (rule.bias and bias is not None) else None
    safe = ("safe", KERAS_EPSILON) if rule.stabilizer is None else ("epsilon", rule.stabilizer)
    if rule.kind == "z":
        return [(1.0, [(x, kernel, 1.0)], b, safe)]
    if rule.kind == "epsilon":
        return [(1.0, [(x, kernel, 1.0)], b, ("epsilon", rule.epsilon))]
    if rule.kind in ("w_square", "flat"):
        w = variant("square" if rule.kind == "w_square" else "ones", keep=False)
        squared_bias = (
            np.square(b) if rule.kind == "w_square" and rule.bias_part == "square" and b is not None else None
        )
        return [(1.0, [(ONES[rule.kind], w, 1.0)], squared_bias, safe)]
    wp, wn = variant("pos"), variant("neg")
    if rule.kind == "z_plus_fast":
        return [(1.0, [(x, wp, 1.0)], None, safe)]
    if rule.kind == "positive_weights":
        return [(1.0, [(x, wp, 1.0)], b, safe)]
    if rule.kind == "gamma_plain":
        return [(1.0, [(x, wp, 1.0 + rule.gamma), (x, wn, 1.0)], b, safe)]
    if rule.kind == "bounded":
        low, high = np.full_like(x, rule.low), np.full_like(x, rule.high)
        return [(1.0, [(x, kernel, 1.0), (low, wp, -1.0), (high, wn, -1.0)], None, safe)]
    # after a ReLU x has no negative part: x itself is x+, and x- (all zeros) contributes nothing
    negative = bool((x < 0).any())
    xp, xn = (_pos(x), _neg(x)) if negative else (x, _NO_INPUT)
    if rule.kind == "alpha_beta":
        split = rule.bias_part == "split" and b is not None
        activator, inhibitor = (_pos(b), _neg(b)) if split else (b, b)
        out = [(rule.alpha, [(xp, wp, 1.0), (xn, wn, 1.0)], activator, safe)]
        if rule.beta:
            out.append((-rule.beta, [(xp, wn, 1.0), (xn, wp, 1.0)], inhibitor, safe))
        return out
    if rule.kind == "gamma":
        if z is None:
            raise UnsupportedRule("zennit's gamma rule needs the layer's output")
        g = 1.0 + rule.gamma
        up = None if b is None else b + rule.gamma * _pos(b)
        down = None if b is None else b + rule.gamma * _neg(b)
        return [
            (1.0, [(xp, wp, g), (xp, wn, 1.0), (xn, wp, 1.0), (xn, wn, g)], up, safe, z > 0),
            (1.0, [(xp, wp, 1.0), (xp, wn, g), (xn, wp, g), (xn, wn, 1.0)], down, safe, z < 0),
        ]
    if rule.kind == "alpha_beta_x":
        # innvestigate's AlphaBetaXRule: four single-layer terms, each with its copy's bias
        # part (b+ with the positive weights, b- with the negative ones)
        a0, _a1, b0, b1 = rule.x_weights
        bp = _pos(b) if b is not None else None
        bn = _neg(b) if b is not None else None
        candidates = [(a0, xp, wp, bp), (b1, xn, wn, bn), (-b0, xp, wn, bn), (-b1, xn, wp, bp)]
        return [(k, [(xv, wv, 1.0)], bv, safe) for k, xv, wv, bv in candidates if k]
    raise UnsupportedRule(f"rule {rule.kind!r} has no reference")


def stabilize(d: np.ndarray, stabilizer) -> np.ndarray:
    kind, eps = stabilizer
    if kind == "safe":
        return d + eps * (d == 0)
    return d + np.where(d >= 0, eps, -eps)


def apply_terms(
    op,
    term_list,
    relevance: np.ndarray,
    x_shape,
    known=None,
    cache=None,
    observed=None,
    bound=None,
    forward: float = 0.0,
) -> tuple[np.ndarray, dict, dict | None, Rounding | None]:
    """Relevance at the input of a linear layer, the per-sample mechanisms, and the same mechanisms
    for ``observed`` (another relevance at the layer's output, e.g. innvestigate's) or None.

    Every mechanism is a per-neuron factor (fixed by x, the weights and the rule) times the
    neuron's relevance, so it can be applied to any relevance arriving at this layer: the
    mechanisms of ``observed`` are what the formula makes of *that* relevance here.

    ``known`` is an already computed forward product, (x, kernel, forward(x, kernel)), reused
    when a term has that very pair. A pair whose input variant is all zeros (x- after a ReLU)
    contributes exactly nothing and is skipped.

    ``bound``: a bound on how far float32 arithmetic may have moved the relevance at the layer's
    output (per element); the layer's own rounding is added to it and the result returned as a
    Rounding (else None). ``forward``: how many roundings of u the layer's inputs carry from
    innvestigate's own forward pass. See float32_bound below for the derivation."""
    r_in = np.zeros(x_shape, dtype=relevance.dtype)
    batch = relevance.shape[0]
    axes = tuple(range(1, relevance.ndim))
    kept_by_bias = np.zeros_like(relevance, dtype=bool)
    present_kappa = np.zeros_like(relevance)
    any_present = np.zeros_like(relevance, dtype=bool)
    targets = [relevance] if observed is None else [relevance, observed]
    mechs = [{name: np.zeros(batch) for name in MECHANISMS} for _ in targets]
    rounding = None if bound is None else Rounding(np.zeros(x_shape), np.zeros(batch))

    def charge(name, where, factor):
        for r, mech in zip(targets, mechs):
            mech[name] += np.where(where, factor * r, 0).sum(axis=axes)

    for kappa, pairs, b, stabilizer, *masked in term_list:
        mask = masked[0] if masked else None
        pairs = [(xv, wv, sign) for xv, wv, sign in pairs if xv.any()]
        c = np.zeros_like(relevance)
        for xv, wv, sign in pairs:
            if known is not None and xv is known[0] and wv is known[1]:
                c = c + sign * known[2]
            elif isinstance(xv, _Ones):
                c = c + sign * _forward_of_ones(op, wv, xv.rule, x_shape, {} if cache is None else cache)
            else:
                c = c + sign * op.forward(xv, wv)
        d = c + b if b is not None else c
        # safe division leaves every nonzero denominator alone: without a zero, ds is d and the
        # stabilizer's part (d - ds) is 0 everywhere (the same numbers, without the full-size temporaries)
        untouched = stabilizer[0] == "safe" and not (d == 0).any()
        ds = d if untouched else stabilize(d, stabilizer)
        s = relevance / ds if mask is None else np.where(mask, relevance / ds, 0.0)
        for xv, wv, sign in pairs:
            back = op.transpose(s, wv, x_shape)
            r_in += sign * kappa * (back if isinstance(xv, _Ones) else xv * back)
        if rounding is not None:
            _bound_term(op, kappa, pairs, c, b, ds, relevance, bound, x_shape, cache, rounding, forward)
        present = (c != 0) if mask is None else (c != 0) & mask
        any_present |= present
        present_kappa += kappa * present
        if b is not None:
            kept_by_bias |= (d != 0) if mask is None else (d != 0) & mask
            bias_factor = -kappa * np.broadcast_to(b, d.shape) / ds
        if untouched:
            if b is not None:
                charge("bias", present, bias_factor)
            continue
        if b is None:
            bias_factor = np.zeros_like(d)
        stab_factor = kappa * (d - ds) / ds
        # d == 0 with c != 0: the bias cancels the contributions exactly; the blow-up is the bias's
        blowup = present & (d == 0)
        charge("bias", present, bias_factor + np.where(blowup, stab_factor, 0))
        charge("stabilizer", present & ~blowup, stab_factor)
    charge("unbalanced", any_present, present_kappa - 1)
    charge("bias", ~any_present & kept_by_bias, -1.0)
    charge("dropped", ~any_present & ~kept_by_bias, -1.0)
    return r_in, mechs[0], (mechs[1] if observed is not None else None), rounding


# float32's unit roundoff: innvestigate computes in float32, the reference in float64.
# A layer whose bias is itself computed in float32 (BatchNormalization's fused beta - mean k) puts the
# magnitude of what it is made of under this key of apply_terms' cache: its rounding scales with that.
BIAS_MAGNITUDE = "bias magnitude"
FLOAT32_UNIT = 2.0**-24
# How many standard deviations of independent roundings an element's bound allows: Higham and Mary's
# probabilistic bound lambda sqrt(n) u holds with probability 1 - 2 exp(-lambda^2 / 2), 1 - 3e-8 here.
ROUNDING_SIGMAS = 6.0


@dataclass
class Rounding:
    """How far float32 arithmetic may move relevance (see float32_bound), at a layer's input(s): per element
    ``variance``, whose square root is the element's bound (ROUNDING_SIGMAS standard deviations), and, per
    sample, ``local``, the most this layer's own arithmetic can move the total."""

    variance: np.ndarray
    local: np.ndarray


def fan(op, kernel) -> tuple[int, int]:
    """(fan-in, fan-out): the lengths of the float32 sums a layer's rule computes (its dot products
    forward, and each input's sum over the neurons it feeds backward)."""
    shape = getattr(kernel, "shape", None)
    if shape is not None and len(shape) >= 2:
        return int(np.prod(shape[:-1])), int(np.prod(shape[:-2])) * int(shape[-1])
    windows = getattr(op, "w", None)
    if windows is None:
        # BatchNormalization: innvestigate fuses k = gamma / sqrt(var + eps) and b = beta - k mean in float32,
        # four roundings before the one product
        return 5, 1
    n = int(np.prod(windows.kernel))
    return n, n


def float32_bound(kappa, contributions, absolute, bias, ds, relevance, inherited, fans, forward: float = 0.0):
    """One term's float32 rounding, per neuron: (the variance its messages carry, to be spread by x^2 w^2, with
    ``inherited`` the variance the relevance arriving there carries; the most it moves the total).

    A message is m_ij = x_i w_ij R_j / ds_j. In float32 the denominator ds_j = sum_i x_i w_ij + b_j is off
    by at most n u A_j, A_j = sum_i |x_i w_ij| + |b_j| (Higham: a sum of n terms, u = 2^-24), a relative
    error of n u k_j with k_j = A_j / |ds_j|, the neuron's condition number: 1 where all contributions
    share a sign, large where they cancel (alpha-beta's bias against its positive part, an Add whose
    inputs nearly cancel). The inputs x_i themselves come from innvestigate's float32 forward pass, each
    rounded ``forward`` times (the dot products of the layers below): the denominator's sum counts
    n + forward roundings. Each input's sum over the m neurons it feeds adds m u of its terms' magnitude.
    - The total: neuron j's messages sum to R_j c_j / ds_j, so it moves the total by at most
      |R_j| u (n k_j |c_j / ds_j| + m (A_j - |b_j|) / |ds_j|): a worst-case bound, linear in k_j.
    - Each element: roundings are independent in practice, so they add as variances (Higham and Mary's
      probabilistic analysis: sqrt(n) u instead of n u; ROUNDING_SIGMAS standard deviations): with the
      variance V_j the relevance arriving at j carries from above, its messages carry
      kappa^2 (V_j + (6 u R_j)^2 (n k_j^2 + m)) / ds_j^2, spread to the inputs with x_i^2 w_ij^2."""
    fan_in, fan_out = fans
    fan_in = fan_in + forward
    absolute_ds = np.abs(ds)
    scale = absolute + (np.abs(bias) if bias is not None else 0.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        condition = np.where(absolute_ds > 0, scale / absolute_ds, 0.0)
        r2 = np.square(relevance)
        own = (ROUNDING_SIGMAS * FLOAT32_UNIT) ** 2 * r2 * (fan_in * np.square(condition) + fan_out)
        carried = kappa**2 * (own + inherited) / np.square(absolute_ds)
        local = (
            abs(kappa)
            * np.abs(relevance)
            * FLOAT32_UNIT
            * np.where(
                absolute_ds > 0, (fan_in * condition * np.abs(contributions) + fan_out * absolute) / absolute_ds, 0.0
            )
        )
    clean = lambda a: np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0, posinf=0.0)  # noqa: E731  (ds = 0: no message)
    return clean(carried), clean(local)


def _bound_term(
    op, kappa, pairs, c, b, ds, relevance, inherited, x_shape, cache, rounding: Rounding, forward: float = 0.0
) -> None:
    pieces = [(xv, _absolute_pieces(wv, cache), abs(sign)) for xv, wv, sign in pairs]
    single = all(len(p) == 1 for _, p, _ in pieces) and all(
        isinstance(xv, _Ones) or _single_signed(xv) for xv, _, _ in pieces
    )
    if single and len({_product_sign(xv, p[0][1]) for xv, p, _ in pieces}) == 1:
        absolute = np.abs(c)  # no contribution cancels another: sum |x w| = |sum x w|
    else:
        absolute = sum(factor * _absolute_forward(op, xv, p, x_shape, cache) for xv, p, factor in pieces)
    magnitude = (cache or {}).get(BIAS_MAGNITUDE, b)
    carried, local = float32_bound(
        kappa,
        c,
        absolute,
        np.broadcast_to(magnitude, c.shape) if b is not None else None,
        ds,
        relevance,
        inherited,
        fan(op, pairs[0][1] if pairs else None),
        forward,
    )
    axes = tuple(range(1, relevance.ndim))
    rounding.local += local.sum(axis=axes)
    for xv, wv, _ in pairs:
        variance = op.transpose(carried, _squared(wv, cache), x_shape)
        rounding.variance += variance if isinstance(xv, _Ones) else np.square(xv) * variance


def _squared(wv, cache):
    """w^2 for spreading variances (average pooling's 1/n weights are used as they are: an overestimate)."""
    if wv is None:
        return None
    if isinstance(wv, KernelPart):
        return KernelPart(wv.kernel, wv.name + "_square")
    key = None
    if cache is not None:
        key = next((name + "_square" for name in ("pos", "neg") if wv is cache.get(name)), None)
        if key is None and wv is cache.get("kernel"):
            key = "square"
    if key is not None and key in cache:
        return cache[key]
    if wv.ndim == 2 and wv.size > PART_ENTRIES:
        return KernelPart(wv, "square")
    squared = np.square(wv)
    if key is not None:
        cache[key] = squared
    return squared


def _product_sign(xv, weight_sign: float) -> float:
    """The sign of every product x w of a pair with a single-signed input and kernel part."""
    negative = isinstance(xv, np.ndarray) and bool((xv < 0).any())
    return -weight_sign if negative else weight_sign


def _single_signed(x) -> bool:
    return not isinstance(x, np.ndarray) or bool((x >= 0).all() or (x <= 0).all())


def _absolute_pieces(wv, cache) -> list:
    """|wv| as a sum of sign * part: a single-signed variant as it is, the kernel itself as its positive
    part minus its negative part (the parts the rules keep anyway, or KernelParts for a large kernel)."""
    if wv is None:  # average pooling and Add: positive weights
        return [(None, 1.0)]
    if isinstance(wv, KernelPart):
        return [(wv, -1.0 if wv.name == "neg" else 1.0)]
    if cache is not None and wv is cache.get("neg"):
        return [(wv, -1.0)]
    if cache is not None and wv is cache.get("pos"):
        return [(wv, 1.0)]
    if (wv >= 0).all():
        return [(wv, 1.0)]
    if (wv <= 0).all():
        return [(wv, -1.0)]
    if wv.ndim == 2 and wv.size > PART_ENTRIES:
        return [(KernelPart(wv, "pos"), 1.0), (KernelPart(wv, "neg"), -1.0)]
    if cache is not None:
        return [(cache.setdefault("pos", PARTS["pos"](wv)), 1.0), (cache.setdefault("neg", PARTS["neg"](wv)), -1.0)]
    return [(PARTS["pos"](wv), 1.0), (PARTS["neg"](wv), -1.0)]


def _absolute_forward(op, xv, pieces, x_shape, cache) -> np.ndarray:
    """sum_i |x_i| |w_ij| per neuron."""
    if isinstance(xv, _Ones):
        return sum(
            sign * _forward_of_ones(op, w, xv.rule, x_shape, {} if cache is None else cache) for w, sign in pieces
        )
    ax = np.abs(xv)
    return sum(sign * (op.forward(ax, w) if w is not None else op.forward(ax)) for w, sign in pieces)


def _forward_of_ones(op, kernel, rule: str, x_shape, cache: dict) -> np.ndarray:
    key = ("ones", rule, tuple(x_shape[1:]))
    if key not in cache:
        cache[key] = op.forward(np.ones((1, *tuple(x_shape[1:])), dtype=kernel.dtype), kernel)
    return cache[key]


def zero_mechanisms(batch: int) -> dict:
    return {name: np.zeros(batch) for name in MECHANISMS}
