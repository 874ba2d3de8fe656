"""Relevance per block and module of a transformer, and the leak of LXT's rules split by mechanism.

Read off one backward pass by the PyTorch backend's tracker (pytorch/layers.py): each module call's relevance
at its output and what it hands to its inputs (gradient x input for LXT's efficient rules, the gradient
itself for its explicit ones). The change a call makes is split by where it happens:
- a leaf with a bias (linear layers, GPT-2's Conv1D, LayerNorm): the bias takes sum(b * gradient) (``bias``;
  LXT's explicit rules: the whole change of a leaf with a bias, its stabiliser included);
- an attention module's own operations (the products and the softmax around its projections): AttnLRP's
  softmax rule, which does not conserve (``softmax``; 0 for CP-LRP, whose softmax takes no relevance);
- the embeddings' own operations, or the base model's (position and token-type embeddings added to the input
  embeddings, a ViT's class token): what those constants take (``embeddings``);
- anything else that changes the relevance beyond float rounding is an operation LXT did not patch: a leaf
  (an activation or normalisation module of a class LXT's map does not know) or a module's own operations.
  That is never a property of the rule, so it fails conservation whatever the tolerance, naming the class.
What no module holds, and rounding, is ``unexplained``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..base.lazy import np
from ..checks.layers import LayerRelevance
from ..checks.leaks import LayerLeaks, LeakAccount
from ..config.rulefile import LXT_LEAK_MECHANISMS

UNPATCHED = "unpatched"
MECHANISMS = (*LXT_LEAK_MECHANISMS, UNPATCHED)
# An unpatched operation changes relevance by a sizeable share of what passes it; float rounding by a few units
# of the last place of the terms' magnitudes. Below this share of the terms' absolute sum, it is rounding.
ROUNDING_SHARE = {"float32": 2e-4, "bfloat16": 5e-2}
OWN_SHARE = ROUNDING_SHARE["float32"]


@dataclass
class _Node:
    index: int
    name: str
    cls: str
    module: object
    leaf: bool
    at_output: np.ndarray
    at_inputs: np.ndarray
    children: list
    bias_share: np.ndarray | None = None  # sum(b * gradient at the output), leaves with a bias
    scale: object = None  # () -> sum of |relevance| at output and inputs: what rounding is relative to

    @property
    def change(self) -> np.ndarray:
        return self.at_inputs - self.at_output

    @property
    def own(self) -> np.ndarray:
        """The change its own operations make, beyond its parts' (a leaf: all of it)."""
        return self.change - np.sum([c.change for c in self.children], axis=0) if self.children else self.change

    def beyond_rounding(self, value: np.ndarray, share: float) -> bool:
        """|value| above ``share`` of the terms' absolute sum in some sample. The net sums bound that sum from
        below, so a value within their share is rounding without summing absolute values (which costs)."""
        if not self.beyond_net(value, share):
            return False
        return bool(np.any(np.abs(value) > share * self.magnitude))

    def beyond_net(self, value: np.ndarray, share: float) -> bool:
        """|value| above ``share`` of the net relevance at output and inputs: enough to list an entry."""
        return bool(np.any(np.abs(value) > share * (np.abs(self.at_output) + np.abs(self.at_inputs))))

    @property
    def magnitude(self) -> np.ndarray:
        return self.scale() if self.scale is not None else np.abs(self.at_output) + np.abs(self.at_inputs)


def nodes(tracker, samples: int) -> list:
    """The module calls with relevance on both sides, as a forest in call order. A linear leaf without views
    (ModuleTracker.linear) hands down what enters it less its bias's share."""
    kept = {}
    for index, call in enumerate(tracker.calls):
        # No gradient reached its output: not on the explained logit's path (a sequence classifier's own pooled
        # logits, when the per-token scores are explained: loading.per_token_scores).
        if call.output is None or call.grad_out is None:
            continue
        at_output, at_inputs = tracker.call_totals(call, samples)
        bias = _summed_bias(call, samples) if call.leaf else None
        if call.linear:
            at_inputs = at_output - (bias if bias is not None else 0.0)
        if at_inputs is None:
            continue
        node = _Node(index, call.name, call.cls, call.module, call.leaf, at_output, at_inputs, [], bias)
        if not call.linear:
            node.scale = _scale(tracker, call, samples)
        kept[index] = node
    for index, node in kept.items():
        node.children = [kept[c] for c in _descendants(tracker.calls, index, kept)]
    return list(kept.values())


def _scale(tracker, call, samples: int):
    def scale() -> np.ndarray:
        at_output, at_inputs = tracker.call_totals(call, samples, absolute=True)
        return at_output + (at_inputs if at_inputs is not None else 0.0)

    return scale


def _descendants(calls: list, index: int, kept: dict) -> list:
    """The nearest kept calls below ``index`` (a call without relevance passes its children up)."""
    found = []
    for child in calls[index].children:
        found += [child] if child in kept else _descendants(calls, child, kept)
    return found


def block_table(all_nodes: list, heatmap_sums: np.ndarray) -> list:
    """LayerRelevance entries, output first: the model, its blocks and each block's parts (attention, MLP,
    normalisations), the head; each container before its parts; the input embeddings last."""
    depths = [n.name.count(".") for n in all_nodes if n.name.rsplit(".", 1)[-1].isdigit()]
    deepest = (min(depths) if depths else 1) + 1
    entries = []
    for node in all_nodes:
        if node.name.count(".") <= deepest:
            entries.append(node)
    child_of = {c.index for n in entries for c in n.children}
    ordered: list = []

    def visit(node):
        ordered.append(node)
        for child in reversed(node.children):
            if child in entries:
                visit(child)
            else:
                for grandchild in reversed(_kept_below(child)):
                    if grandchild in entries:
                        visit(grandchild)

    for root in reversed([n for n in entries if n.index not in child_of]):
        visit(root)
    seen, table = set(), []
    for node in ordered:
        if node.index not in seen:
            seen.add(node.index)
            container = any(child in entries for child in _kept_below(node))
            table.append(LayerRelevance(node.name, node.cls, node.at_output, node.at_inputs, container=container))
            own = node.own
            if container and node.beyond_net(own, OWN_SHARE):
                # Operations no listed part holds (a softmax, position embeddings added): an entry of their own.
                table.append(
                    LayerRelevance(
                        f"{node.name} (own operations)", f"{node.cls} ops", node.at_output, node.at_output + own
                    )
                )
    table.append(LayerRelevance("input embeddings", "InputLayer", heatmap_sums, heatmap_sums))
    return table


def _kept_below(node) -> list:
    found = []
    for child in node.children:
        found += [child, *_kept_below(child)]
    return found


def leak_account(all_nodes: list, model, errors: np.ndarray, rule, dtype: str, explicit: bool) -> tuple:
    """(LeakAccount, lines naming unpatched operations): the change of every module call split by mechanism."""
    share = ROUNDING_SHARE[dtype]
    base = getattr(model.module, "base_model", None)
    layers, unpatched = [], []
    for node in all_nodes:
        change = node.own
        zero = np.zeros_like(change)
        mechanisms = {name: zero.copy() for name in MECHANISMS}
        if node.leaf:
            bias = change if explicit and _bias(node.module) is not None else _bias_share(node, explicit)
            mechanisms["bias"] = bias
            rest = change - bias
            where = f"'{node.name}' ({node.cls})"
        else:
            rest = change
            if "attention" in node.cls.lower():
                mechanisms["softmax"], rest = rest, zero
            elif "embedding" in node.cls.lower() or node.module is base or node.module is model.module:
                mechanisms["embeddings"], rest = rest, zero
            where = f"the own operations of '{node.name}' ({node.cls})"
        if node.beyond_rounding(rest, share):
            mechanisms[UNPATCHED] = rest
            worst = int(np.argmax(np.abs(rest) / np.maximum(share * node.magnitude, 1e-300)))
            unpatched.append(
                f"{where}: {float(rest[worst]):+.4g} of {float(node.at_output[worst]):.4g} (sample {worst})"
            )
        # Rounding alone makes no entry (it is in the total's unexplained rest); a bias's share, exact, always does.
        if node.beyond_net(change, share) or np.any(mechanisms["bias"] != 0):
            name = node.name if node.leaf else f"{node.name} (own operations)"
            layers.append(LayerLeaks(name, node.cls, rule.analyzer, change, mechanisms))
    layers.reverse()
    account = LeakAccount(
        layers=layers,
        errors=errors,
        implementation="lxt",
        mechanisms=MECHANISMS,
        source="LXT's relevance per module",
    )
    return account, unpatched


def _bias(module):
    bias = getattr(module, "bias", None)
    return bias if bias is not None and hasattr(bias, "detach") and bias.numel() > 0 else None


def _bias_share(node, explicit: bool) -> np.ndarray:
    """The bias's part of the change: -sum(b * gradient at the output) in gradient x input."""
    return np.zeros_like(node.change) if node.bias_share is None or explicit else -node.bias_share


def _summed_bias(call, samples: int):
    bias = _bias(call.module)
    if bias is None or call.grad_out is None:
        return None
    grad, bias = call.grad_out.float(), bias.detach().float()
    if grad.shape[-1] == bias.numel():  # linear layers, Conv1D, LayerNorm: features last
        per_feature = grad.reshape(samples, -1, bias.numel()).sum(dim=1)
    elif grad.dim() == 4 and grad.shape[1] == bias.numel():  # a convolution's channels (ViT's patches)
        per_feature = grad.sum(dim=(2, 3))
    else:
        return None
    return (per_feature @ bias).double().cpu().numpy()
