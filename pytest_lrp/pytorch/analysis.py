"""One rule's analysis of one PyTorch module: the same Analysis record the Keras backend fills.

The heatmaps, the explained outputs and neurons, relevance per module (for the relevance rules) and the
reruns the determinism and batch_invariance checks compare with. A final Softmax of an ``nn.Sequential`` is
left out, as the Keras backend strips a final softmax: the explained output is the pre-softmax score.
The numpy reference reads the module too (reference.py): the reference check and the leak accounting.
"""

from __future__ import annotations

import contextlib
import warnings

from ..base.lazy import np
from ..checks.explained import explained_neurons, targets
from ..checks.record import Analysis
from ..checks.reference_run import wanted
from ..checks.reruns import extra_runs
from ..config.torch_analyzers import GRADIENTS, WITH_REFERENCE
from .analyzers import canonizer_names, forward, functional_operation, runner
from .limitations import functional_limitation
from .loading import TorchModel
from .reference import judged
from .runtime import torch

SOFTMAX = ("Softmax", "LogSoftmax")


def analyze(model: TorchModel, rule, x: np.ndarray) -> Analysis:
    try:
        with reproducible_float32():
            return _analyze(model, rule, x)
    except Exception:  # a crash, not a refusal (pytest's skip is no Exception)
        model.restore()
        raise


@contextlib.contextmanager
def reproducible_float32():
    """On a GPU, torch may compute convolutions (and, if the user asked, matrix products) in TF32, with a
    10-bit mantissa: rounding a thousand times float32's, which conservation would judge as a leak; and cuDNN
    may pick backward algorithms that add with atomics in any order, so that the same analysis twice differs
    in the last bits, which the determinism check would judge as innvestigate#118. The analyses run in
    float32 proper with torch's deterministic algorithms (a warning, not an error, where an operation has
    none); the user's settings are restored after."""
    t = torch()
    backends = t.backends
    saved = (
        backends.cudnn.allow_tf32,
        backends.cuda.matmul.allow_tf32,
        backends.cudnn.deterministic,
        backends.cudnn.benchmark,
        t.are_deterministic_algorithms_enabled(),
        t.is_deterministic_algorithms_warn_only_enabled(),
    )
    backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = False
    backends.cudnn.deterministic, backends.cudnn.benchmark = True, False
    t.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*deterministic.*")
            yield
    finally:
        backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved[0], saved[1]
        backends.cudnn.deterministic, backends.cudnn.benchmark = saved[2], saved[3]
        t.use_deterministic_algorithms(saved[4], warn_only=saved[5])


def _analyze(model: TorchModel, rule, x: np.ndarray) -> Analysis:
    module, stripped = _without_softmax(model.module)
    run = runner(rule, module, model.device)
    keep_layers = rule.analyzer not in GRADIENTS and rule.analyzer not in WITH_REFERENCE

    def select(outputs: np.ndarray) -> np.ndarray:
        return explained_neurons(rule, outputs, str(model.path))

    first = run(x, select, keep_layers)
    outputs, neurons = first.outputs, first.neurons
    selected = outputs[np.arange(len(x)), neurons]
    reruns = extra_runs(rule, lambda batch: run(batch, select, False).heatmaps, x)
    reference = None
    if rule.target == "output_minus_reference":
        base = np.full_like(x, float(rule.params.get("reference_inputs", 0.0)))
        reference = forward(module, base, model.device)[np.arange(len(x)), neurons]
    analysis = Analysis(
        model=model,
        rule=rule,
        inputs=x,
        heatmaps=first.heatmaps,
        outputs=outputs,
        neurons=neurons,
        targets=targets(rule, selected, reference),
        softmax_stripped=stripped,
        layers=first.layers,
        reruns=reruns,
    )
    if wanted(rule):
        analysis.reference, analysis.leaks = judged(
            model, module, rule, x, analysis, first.maps, canonizer_names(rule, module)
        )
    if first.layers and analysis.failing.any():  # tracing the module with torch.fx costs; only a failure needs it
        analysis.limitation = functional_limitation(analysis, functional_operation(module))
    return analysis


def _without_softmax(module):
    t = torch()
    if isinstance(module, t.nn.Sequential) and len(module) > 1 and type(module[-1]).__name__ in SOFTMAX:
        return module[:-1], True
    return module, False
