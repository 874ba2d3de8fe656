"""What an analysis explains, from the model's outputs: the neuron of each sample and the target its relevance
should sum to. Every backend chooses them the same way (engine/analysis.py, pytorch/analysis.py)."""

from __future__ import annotations

from ..base.errors import LrpUsageError
from ..base.lazy import np


def explained_neurons(rule, outputs: np.ndarray, model_label: str) -> np.ndarray:
    """The largest output per sample (max_activation), or the rule's index, checked against the outputs."""
    if rule.neuron_selection == "max_activation":
        return np.argmax(outputs, axis=1)
    index = int(rule.neuron_selection)
    if index >= outputs.shape[1]:
        raise LrpUsageError(
            f"{rule.where('neuron_selection')}: output index {index} is out of range; "
            f"{model_label} has {outputs.shape[1]} outputs"
        )
    return np.full(len(outputs), index)


def targets(rule, selected: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """What the heatmap should sum to: the explained output, its positive part, or its difference to the
    reference input's output (``reference`` holds that output per sample)."""
    if rule.target == "positive_output":
        return np.maximum(selected, 0.0)
    if rule.target == "output_minus_reference":
        assert reference is not None, "output_minus_reference needs the reference input's outputs"
        return selected - reference
    return selected
