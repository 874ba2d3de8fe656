"""One rule's analysis of one PyTorch module: the same Analysis record the Keras backend fills.

The heatmaps, the explained outputs and neurons, relevance per module (for the relevance rules) and the
reruns the determinism and batch_invariance checks compare with. A final Softmax of an ``nn.Sequential`` is
left out, as the Keras backend strips a final softmax: the explained output is the pre-softmax score.
The numpy reference reads Keras models only, so ``reference`` is None and the reference check skips.
"""

from __future__ import annotations

from ..base.errors import LrpUsageError
from ..base.lazy import np
from ..checks.record import Analysis
from ..checks.reruns import extra_runs
from ..config.torch_analyzers import GRADIENTS, WITH_REFERENCE
from .analyzers import functional_operation, runner
from .limitations import functional_limitation
from .loading import TorchModel
from .runtime import torch

SOFTMAX = ("Softmax", "LogSoftmax")


def analyze(model: TorchModel, rule, x: np.ndarray) -> Analysis:
    try:
        return _analyze(model, rule, x)
    except BaseException:
        model.restore()
        raise


def _analyze(model: TorchModel, rule, x: np.ndarray) -> Analysis:
    module, stripped = _without_softmax(model.module)
    outputs = _outputs(module, x, model.device)
    neurons = _neurons(rule, outputs, model)
    run = runner(rule, module, model.device)
    keep_layers = rule.analyzer not in GRADIENTS and rule.analyzer not in WITH_REFERENCE
    first = run(x, neurons, keep_layers)
    selected = outputs[np.arange(len(x)), neurons]
    reruns = extra_runs(
        rule, lambda batch: run(batch, _neurons(rule, _outputs(module, batch, model.device), model), False).heatmaps, x
    )
    reference = None
    if rule.target == "output_minus_reference":
        base = np.full_like(x, float(rule.params.get("reference_inputs", 0.0)))
        reference = _outputs(module, base, model.device)[np.arange(len(x)), neurons]
    analysis = Analysis(
        model=model,
        rule=rule,
        inputs=x,
        heatmaps=first.heatmaps,
        outputs=outputs,
        neurons=neurons,
        targets=_targets(rule.target, selected, reference),
        softmax_stripped=stripped,
        layers=first.layers,
        reruns=reruns,
    )
    if first.layers:
        analysis.limitation = functional_limitation(analysis, functional_operation(module))
    return analysis


def _without_softmax(module):
    t = torch()
    if isinstance(module, t.nn.Sequential) and len(module) > 1 and type(module[-1]).__name__ in SOFTMAX:
        return module[:-1], True
    return module, False


def _outputs(module, x: np.ndarray, device: str) -> np.ndarray:
    t = torch()
    with t.no_grad():
        out = module(t.as_tensor(np.ascontiguousarray(x), dtype=t.float32, device=device))
    return out.detach().double().cpu().numpy().reshape(len(x), -1)


def _neurons(rule, outputs: np.ndarray, model: TorchModel) -> np.ndarray:
    if rule.neuron_selection == "max_activation":
        return np.argmax(outputs, axis=1)
    index = int(rule.neuron_selection)
    if index >= outputs.shape[1]:
        raise LrpUsageError(
            f"{rule.where('neuron_selection')}: output index {index} is out of range; {model.path} has {outputs.shape[1]} outputs"
        )
    return np.full(len(outputs), index)


def _targets(target: str, selected: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    if target == "positive_output":
        return np.maximum(selected, 0.0)
    if target == "output_minus_reference":
        assert reference is not None
        return selected - reference
    return selected
