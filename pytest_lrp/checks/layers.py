"""Relevance totals per layer, output first: the data a leak is localized with, and how it is described.

Filled by the engine (engine/layer_relevance.py maps innvestigate's kept tensors to
Keras layers); read by the conservation check and the reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base.lazy import np


@dataclass
class LayerRelevance:
    """Relevance totals per sample at one layer's output (what enters it from above)
    and at its inputs (what it hands down)."""

    name: str
    cls: str
    at_output: np.ndarray = field(repr=False)
    at_inputs: np.ndarray = field(repr=False)
    # Layers reported together because they read a common tensor (their name is the members' joined).
    members: tuple = ()
    # A module holding others listed too (a transformer block): its change is its parts', so a leak is
    # localised to the parts.
    container: bool = False

    def change(self, sample: int) -> float:
        return float(self.at_inputs[sample] - self.at_output[sample])


def largest_change(layers: list, sample: int):
    """The layer whose relevance changes most between its output and its inputs."""
    candidates = [layer for layer in layers if layer.cls != "InputLayer" and not layer.container]
    if not candidates:
        return None
    return max(candidates, key=lambda layer: abs(layer.change(sample)) if np.isfinite(layer.change(sample)) else np.inf)


def describe_change(layer: LayerRelevance, sample: int) -> str:
    before, after = float(layer.at_output[sample]), float(layer.at_inputs[sample])
    share = f" ({(after - before) / abs(before):+.1%})" if before != 0 else ""
    return f"largest change at layer '{layer.name}' ({layer.cls}): {before:.4g} -> {after:.4g}{share}"


def layer_table(layers: list, sample: int) -> str:
    """A compact per-layer table of totals for one sample, output first."""
    width = max(len(f"{layer.name} ({layer.cls})") for layer in layers)
    lines = [f"relevance per layer, sample {sample} (at the layer's output -> handed to its inputs):"]
    for layer in layers:
        label = f"{layer.name} ({layer.cls})".ljust(width)
        if layer.cls == "InputLayer":
            lines.append(f"  {label}  {layer.at_output[sample]:>12.6g}")
        else:
            lines.append(
                f"  {label}  {layer.at_output[sample]:>12.6g} -> {layer.at_inputs[sample]:<12.6g} {layer.change(sample):+.3g}"
            )
    return "\n".join(lines)
