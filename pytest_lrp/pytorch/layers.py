"""Relevance per module, read off the backward pass: what enters each module's output and what it hands to
its inputs, also across functional operations (``out + identity`` in a residual block) that no module owns.

zennit's rules return a module's relevance as the gradient of its input, so the gradient at a tensor is the
relevance there. Each module call gets a private view of its inputs (registered before zennit's hooks, so
zennit's rule sits between the view and the module): the view's gradient is what this call alone hands down,
even where a tensor feeds several modules. A container module's change beyond the sum of its children's is
its own functional operations' (an addition, a multiplication), reported as an entry of its own.
captum's LRP keeps each layer's relevance on its rule objects instead (captum_layers).
LXT's rules are gradient x input: the relevance at a tensor is the tensor times its gradient there
(``times_value``); a transformer's modules take their tensors as keywords too (``hidden_states=``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..base.lazy import np
from ..checks.layers import LayerRelevance
from .runtime import torch


@dataclass
class _Call:
    name: str
    cls: str
    leaf: bool
    module: Any = field(default=None, repr=False)
    linear: bool = False  # a leaf of ModuleTracker.linear: no views of its inputs
    inputs: list = field(default_factory=list)  # views of the tensor inputs
    output: object = None
    children: list = field(default_factory=list)  # indices of calls made inside this one
    grads_in: list = field(default_factory=list)
    grad_out: Any = None  # a torch tensor


TOP = "forward"  # the model's own entry, "forward (own operations)"


class ModuleTracker:
    """Hooks on ``module`` and every submodule; use as a context manager around the forward and backward pass."""

    def __init__(self, module, times_value: bool = False, linear: tuple = ()):
        self.module = module
        self.times_value = times_value
        # Leaf classes whose relevance in gradient x input passes unchanged but for their bias (linear layers):
        # their inputs get no view, and their output is kept only where a bias takes a share (LXT's tracking,
        # where most calls are such layers and each view costs the backward pass a hook).
        self.linear = linear
        self.calls: list[_Call] = []
        self._open: list[int] = []
        self._handles: list = []
        self._seen: dict = {}

    def __enter__(self):
        for name, sub in self.module.named_modules():
            # The model itself is a container too: its forward's own operations (a functional ReLU and pooling
            # before the classifier) get an entry of their own.
            name = name or TOP
            leaf = next(iter(sub.children()), None) is None
            self._handles.append(
                sub.register_forward_pre_hook(self._pre(name, type(sub).__name__, leaf), with_kwargs=True)
            )
            self._handles.append(sub.register_forward_hook(self._post()))
        return self

    def __exit__(self, *exc):
        # The gradients are read by now (the backward pass runs inside). A tensor's hook holds its call, which
        # holds the tensor: a cycle through torch's C++ side that the garbage collector cannot see, which would
        # keep every tracked tensor of every analysis alive.
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _pre(self, name: str, cls: str, leaf: bool):
        def hook(sub, args, kwargs):
            count = self._seen[name] = self._seen.get(name, 0) + 1
            call = _Call(name if count == 1 else f"{name}#{count}", cls, leaf, sub)
            call.linear = leaf and isinstance(sub, self.linear)
            if self._open:
                self.calls[self._open[-1]].children.append(len(self.calls))
            self._open.append(len(self.calls))
            self.calls.append(call)
            if call.linear:
                return None
            return tuple(self._view(call, arg) for arg in args), {k: self._view(call, v) for k, v in kwargs.items()}

        return hook

    def _view(self, call: _Call, value):
        if not (torch().is_tensor(value) and value.requires_grad):
            return value
        value = value.view_as(value)
        call.grads_in.append(None)
        self._handles.append(value.register_hook(self._keep_in(call, len(call.grads_in) - 1)))
        call.inputs.append(value)
        return value

    def _post(self):
        def hook(sub, args, output):
            call = self.calls[self._open.pop()]
            if hasattr(output, "to_tuple"):  # transformers' ModelOutput: logits or hidden states first
                output = output.to_tuple()[0]
            if isinstance(output, tuple) and output:  # a transformer block's (hidden_states, attention weights)
                output = output[0]
            if call.linear and getattr(sub, "bias", None) is None:
                return
            if torch().is_tensor(output) and output.requires_grad:
                call.output = output
                self._handles.append(output.register_hook(self._keep_out(call)))

        return hook

    @staticmethod
    def _keep_in(call: _Call, index: int):
        def keep(grad):
            call.grads_in[index] = grad.detach()

        return keep

    @staticmethod
    def _keep_out(call: _Call):
        def keep(grad):
            call.grad_out = grad.detach()

        return keep

    def maps(self) -> dict:
        """{module name: the relevance at its output, per element}, for each leaf module's call."""
        return {
            call.name: call.grad_out.detach().cpu().numpy()
            for call in self.calls
            if call.leaf and call.grad_out is not None and call.grads_in
        }

    def totals(self, samples: int) -> list:
        """Per call: (relevance at its output, relevance handed to its inputs or None), summed per sample."""
        return [self.call_totals(call, samples) for call in self.calls]

    def call_totals(self, call: _Call, samples: int, absolute: bool = False) -> tuple:
        """(at its output, at its inputs or None) for one call (``absolute``: the sums of the absolute values,
        the scale float rounding is relative to)."""
        at_output = self._relevance(call.output, call.grad_out, samples, absolute)
        at_inputs = (
            np.sum([self._relevance(x, g, samples, absolute) for x, g in zip(call.inputs, call.grads_in)], axis=0)
            if call.grads_in
            else None
        )
        return at_output, at_inputs

    def _relevance(self, value, grad, samples: int, absolute: bool = False) -> np.ndarray:
        if grad is None or not self.times_value:
            return _sums(grad.abs() if absolute and grad is not None else grad, samples)
        value, grad = value.detach().reshape(samples, -1).float(), grad.reshape(samples, -1).float()
        if absolute:
            value, grad = value.abs(), grad.abs()
        # One dot product per sample (torch's bmm and einsum are several times slower for this shape).
        return torch().linalg.vecdot(value, grad).double().cpu().numpy()

    def layers(self, samples: int, heatmap_sums: np.ndarray, output_relevance: np.ndarray) -> list:
        """LayerRelevance entries from the output to the input; the last is the input itself."""
        totals = self.totals(samples)
        entries = []
        scale = max(float(np.max(np.abs(output_relevance), initial=0.0)), 1e-30)
        for index, call in enumerate(self.calls):
            at_output, at_inputs = totals[index]
            if at_inputs is None or call.output is None:
                continue
            if call.leaf:
                entries.append(LayerRelevance(call.name, call.cls, at_output, at_inputs))
                continue
            children = [
                totals[c] for c in call.children if totals[c][1] is not None and self.calls[c].output is not None
            ]
            own = (at_inputs - at_output) - np.sum([inp - out for out, inp in children], axis=0)
            if np.max(np.abs(own), initial=0.0) > 1e-6 * scale:
                entries.append(
                    LayerRelevance(f"{call.name} (own operations)", f"{call.cls} ops", at_output, at_output + own)
                )
        entries.reverse()
        entries.append(LayerRelevance("input", "InputLayer", heatmap_sums, heatmap_sums))
        return entries


def captum_layers(rules: list, outputs: np.ndarray, heatmap_sums: np.ndarray) -> list:
    """captum's LRP: relevance per layer from its rules, ``(name, rule, class name)`` in forward order
    (captum normalises the explained output to 1; scaled back by the output)."""
    entries = []
    for name, rule, cls in rules:
        at_output = _first_device(getattr(rule, "relevance_output", {}))
        at_inputs = _first_device(getattr(rule, "relevance_input", {}))
        if at_output is None or at_inputs is None:
            continue
        inputs = at_inputs if isinstance(at_inputs, list) else [at_inputs]
        entries.append(
            LayerRelevance(
                name,
                cls,
                _sums(at_output, len(outputs)) * outputs,
                np.sum([_sums(r, len(outputs)) for r in inputs], axis=0) * outputs,
            )
        )
    entries.reverse()
    entries.append(LayerRelevance("input", "InputLayer", heatmap_sums, heatmap_sums))
    return entries


def captum_maps(rules: list, outputs: np.ndarray) -> dict:
    """captum's LRP: {module name: the relevance at its output, per element}, scaled back by the output."""
    maps = {}
    for name, rule, _ in rules:
        at_output = _first_device(getattr(rule, "relevance_output", {}))
        if at_output is not None:
            array = at_output.detach().cpu().numpy()
            maps[name] = array * outputs.reshape((-1,) + (1,) * (array.ndim - 1))
    return maps


def _first_device(stored: dict):
    return next(iter(stored.values()), None) if stored else None


def _sums(grad, samples: int) -> np.ndarray:
    if grad is None:
        return np.zeros(samples)
    # torch sums float32 pairwise (an error of a few float32 units, not one per element): a float64 copy of
    # every layer's gradient would cost more than the attribution's own backward pass on a ResNet50.
    return grad.detach().reshape(samples, -1).float().sum(dim=1).double().cpu().numpy()
