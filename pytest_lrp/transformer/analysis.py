"""One rule's analysis of one transformers model with LXT: the same Analysis record the other backends fill.

The relevance is LXT's at the input embeddings (text; summed over the hidden dimension: one value per token)
or at the pixels (vision). The explained output is the largest logit (``neuron_selection``), of the last kept
token where the logits are per token; its value is what the relevance should sum to. Alongside: relevance per
block and module (the per-layer table), the leak split by mechanism, and the operations LXT left unpatched.
A sample analysed alone (batch_invariance) is analysed without its padding, so that the check covers the
attention mask too: its relevance must equal the padded batch's on its tokens, and be 0 on the padding.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import pytest

from ..base.lazy import np
from ..checks.explained import explained_neurons, targets
from ..checks.record import Analysis
from ..checks.reruns import extra_runs
from ..config.torch_analyzers import LXT_RULES, is_lxt_analyzer
from ..pytorch.analysis import reproducible_float32
from ..pytorch.layers import ModuleTracker
from ..pytorch.runtime import torch
from .accounting import block_table, leak_account, nodes
from .loading import TransformerModel
from .lxt_maps import bert_classes, patch_map
from .patching import lxt_patched
from .reference import block_comparison
from .runtime import library


@dataclass
class Run:
    heatmaps: np.ndarray
    outputs: np.ndarray
    neurons: np.ndarray
    selected: np.ndarray
    tracker: ModuleTracker | None = None
    notes: list = field(default_factory=list)


def analyze(model: TransformerModel, rule, x: np.ndarray) -> Analysis:
    rounded = rule.params.get("dtype", "float32") != "float32"
    try:
        with reproducible_float32():
            return _analyze(model, rule, x)
    except Exception:  # a crash, not a refusal (pytest's skip is no Exception)
        rounded = True
        raise
    finally:
        if rounded:  # a bfloat16 run rounded the weights; a crash may have left anything
            model.module.float()
            model.restore()


def _analyze(model: TransformerModel, rule, x: np.ndarray) -> Analysis:
    if not is_lxt_analyzer(rule.analyzer):
        pytest.skip(
            f"{rule.analyzer} explains modules that take tensors; {model.name} is a transformers model (token ids or "
            "pixel values in, LXT's patches): its rules are lxt.*"
        )
    dtype = rule.params.get("dtype", "float32")
    explicit = rule.analyzer == "lxt.explicit"
    patches = patch_map(rule.analyzer, model)

    def select(outputs: np.ndarray) -> np.ndarray:
        return explained_neurons(rule, outputs, str(model.path))

    def run(batch: np.ndarray, keep: bool) -> Run:
        if len(batch) == 1 and model.kind == "text":
            return _unpadded(batch, lambda b: _run(model, patches, b, select, keep, dtype, explicit))
        return _run(model, patches, batch, select, keep, dtype, explicit)

    # Relevance per module feeds the conservation verdict (the leak split, unpatched operations) and the
    # reference check; the other checks read the heatmaps only.
    keep = rule.analyzer in LXT_RULES and bool({"conservation", "reference"} & set(rule.checks))
    first = run(x, keep)
    # The repeat (determinism) runs as the first did: the tracker's views change the order in which autograd
    # adds a tensor's gradients from its consumers, a float32 difference that is not the analyzer's.
    reruns = extra_runs(rule, lambda batch: run(batch, keep and len(batch) == len(x)).heatmaps, x)
    analysis = Analysis(
        model=model,
        rule=rule,
        inputs=x,
        heatmaps=first.heatmaps,
        outputs=first.outputs,
        neurons=first.neurons,
        targets=targets(rule, first.selected, None),
        softmax_stripped=False,
        reruns=reruns,
    )
    if first.tracker is not None:
        found = nodes(first.tracker, len(x))
        analysis.layers = block_table(found, analysis.sums)
        analysis.leaks, unpatched = leak_account(found, model, analysis.sums - analysis.targets, rule, dtype, explicit)
        if unpatched:
            analysis.violation = (
                f"an operation LXT did not patch changes the relevance ({rule.analyzer} on {model.name}): "
                + "; ".join(unpatched[:3])
                + (f"; and {len(unpatched) - 3} more" if len(unpatched) > 3 else "")
            )
        if "reference" in rule.checks:
            analysis.reference = block_comparison(model, rule, first.tracker, x, explicit)
    analysis.notes = first.notes
    return analysis


def _run(
    model: TransformerModel, patches: dict, batch: np.ndarray, select, keep: bool, dtype: str, explicit: bool
) -> Run:
    t = torch()
    module = model.module
    if dtype == "bfloat16":
        module.to(t.bfloat16)
    tracker = (
        ModuleTracker(module, times_value=not explicit, linear=() if explicit else _linear_classes()) if keep else None
    )
    with (
        lxt_patched(patches) as notes,
        bert_classes(model) if patches else contextlib.nullcontext(),
        tracker if tracker is not None else contextlib.nullcontext(),
    ):
        start, inputs = _start(model, batch, getattr(t, dtype))
        logits = model.logits(batch, **inputs)
        outputs = logits.detach().double().cpu().numpy()
        neurons = select(outputs)
        rows = t.arange(len(batch), device=logits.device)
        selected = logits[rows, t.as_tensor(neurons, device=logits.device)]
        # LXT's efficient rules: relevance = input x gradient of the explained logit; its explicit rules
        # propagate relevance itself, starting from the logit's value.
        (grad,) = t.autograd.grad(selected, start, selected.detach() if explicit else t.ones_like(selected))
    relevance = (grad if explicit else start.detach() * grad).float()
    if model.kind == "text":
        relevance = relevance.sum(dim=-1)
    return Run(
        heatmaps=relevance.cpu().numpy(),
        outputs=outputs,
        neurons=neurons,
        selected=selected.detach().double().cpu().numpy(),
        tracker=tracker,
        notes=list(notes),
    )


def _linear_classes() -> tuple:
    """Modules that are linear in their input: gradient x input passes their relevance less the bias's share
    (dropout: the identity in eval mode, and LXT patches it to the identity)."""
    t = torch()
    return (t.nn.Linear, t.nn.Conv2d, library("transformers.pytorch_utils").Conv1D, t.nn.Dropout, t.nn.Identity)


def _start(model: TransformerModel, batch: np.ndarray, dtype):
    """The tensor the relevance is read at, and the model's keyword inputs that carry it."""
    t = torch()
    if model.kind == "vision":
        pixels = t.as_tensor(batch, dtype=dtype, device=model.device).requires_grad_(True)
        return pixels, {"pixel_values": pixels}
    ids, _ = model.split(batch)
    with t.no_grad():
        embeds = model.module.get_input_embeddings()(ids)
    embeds = embeds.to(dtype).detach().requires_grad_(True)
    return embeds, {"inputs_embeds": embeds}


def _unpadded(batch: np.ndarray, run) -> Run:
    """One sample analysed without its padding; the relevance put back at its tokens, 0 on the padding."""
    kept = np.flatnonzero(batch[0, 1])
    first, last = int(kept[0]), int(kept[-1]) + 1
    found = run(np.ascontiguousarray(batch[:, :, first:last]))
    heatmaps = np.zeros((1, batch.shape[2]), dtype=found.heatmaps.dtype)
    heatmaps[:, first:last] = found.heatmaps
    found.heatmaps = heatmaps
    return found
