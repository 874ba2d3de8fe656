"""Running one rule's analyzer on one model, in a TensorFlow graph of its own.

A fresh graph per analysis keeps the cost of each analyzer build flat (builds
in one shared graph get slower with every analyzer already in it) and leaves
the process in eager mode, so the user's own TensorFlow tests keep working.
"""

from __future__ import annotations

import gc
import warnings

from ..base.errors import LrpUsageError, shown
from ..base.lazy import np
from ..base.tf_runtime import innvestigate, tensorflow
from ..checks.explained import explained_neurons, targets
from ..checks.record import Analysis, heatmap_sums
from ..checks.reference_run import wanted
from ..checks.reruns import extra_runs
from ..config.rulefile import Rule
from ..models.modelfile import ModelFile
from .layer_relevance import layer_maps, layer_relevance
from .reference_run import run_reference
from .speedup import analyzer_build, prepare_graph, rebuild_config
from .upstream_fixes import reserve_layer_names, without_softmax


def analyze(model: ModelFile, rule: Rule, x: np.ndarray, reference_outputs: np.ndarray) -> Analysis:
    with warnings.catch_warnings():
        # TensorFlow's and Keras' deprecation chatter from inside innvestigate is
        # not something a user of the plugin can act on.
        warnings.simplefilter("ignore")
        try:
            analysis, maps = _analyze(model, rule, x, reference_outputs)
        finally:
            # The graph is garbage (a cycle of ops and tensors) only once _analyze's frame,
            # which holds the models and the analyzer, is gone: collect it now, before the
            # next analysis, not whenever the next automatic collection happens to run.
            gc.collect()
    if wanted(rule):
        # After the collection, so that the reference's peak (integrated gradients runs all its
        # steps in one batch) does not come on top of the graph's.
        analysis.reference, analysis.leaks = run_reference(
            model,
            rule,
            x,
            analysis.heatmaps,
            analysis.outputs,
            analysis.neurons,
            analysis.sums - analysis.targets,
            analysis.layers,
            maps,
        )
    return analysis


def _analyze(model: ModelFile, rule: Rule, x: np.ndarray, reference_outputs: np.ndarray) -> tuple:
    """The Analysis, and innvestigate's per-layer maps for the reference check and the leak accounting (engine/reference_run.py)."""
    tf = tensorflow()
    inn = innvestigate()
    graph = tf.Graph()
    # Our own session, closed on leaving: Keras would otherwise keep one for this graph, with
    # the model's variables in it, until the next analysis replaces it; with the collection in
    # analyze(), consecutive analyses then peak as one does.
    with graph.as_default(), tf.compat.v1.Session(graph=graph), analyzer_build(tf, inn) as overridden:
        prepare_graph(tf)
        keras_model = model.rebuild(rebuild_config(model.config))
        reserve_layer_names(tf, keras_model)
        model.check_same_outputs(keras_model.predict(x, verbose=0), reference_outputs)
        explained, stripped = without_softmax(inn, keras_model)
        outputs = np.asarray(explained.predict(x, verbose=0), dtype=np.float64).reshape(len(x), -1)
        neurons = explained_neurons(rule, outputs, shown(model.path))
        analyzer = _create_analyzer(inn, rule, explained)
        heatmaps = np.asarray(_run(analyzer, rule, x))
        selected = outputs[np.arange(len(x)), neurons]
        layers = layer_relevance(inn, analyzer, explained, heatmap_sums(heatmaps), selected)
        maps = layer_maps(inn, analyzer, explained) if wanted(rule) else {}
        # After layer_relevance: every further run replaces the analyzer's kept tensors.
        reruns = extra_runs(rule, lambda batch: _run(analyzer, rule, batch), x)
        reference = _reference_outputs(rule, explained, x) if rule.target == "output_minus_reference" else None
    if overridden:  # innvestigate's warning-type model checks, run anyway (upstream_fixes.patched_model_checks)
        model.check_overrides[rule.analyzer] = [override.note() for override in overridden]
    analysis = Analysis(
        model=model,
        rule=rule,
        inputs=x,
        heatmaps=heatmaps,
        outputs=outputs,
        neurons=neurons,
        targets=targets(rule, selected, None if reference is None else reference[np.arange(len(neurons)), neurons]),
        softmax_stripped=stripped,
        layers=layers,
        reruns=reruns,
    )
    return analysis, maps


def _run(analyzer, rule: Rule, x: np.ndarray):
    if rule.neuron_selection == "max_activation":
        return analyzer.analyze(x)
    return analyzer.analyze(x, neuron_selection=int(rule.neuron_selection))


def keeps_layer_relevance(analyzer_name: str) -> bool:
    # Only the relevance-propagating analyzers return the per-layer tensors
    # correctly; input_t_gradient crashes with reverse_keep_tensors=True.
    return analyzer_name.split(".")[0] in ("lrp", "deep_taylor")


def _create_analyzer(inn, rule: Rule, keras_model):
    analyzer_class = inn.analyzer.analyzers[rule.analyzer]
    kwargs = dict(rule.params)
    kwargs["neuron_selection_mode"] = "max_activation" if rule.neuron_selection == "max_activation" else "index"
    # innvestigate 2.1.2 crashes sorting the kept tensors in "index" mode
    # (duplicate keys make it compare arrays), so layers are kept for max_activation only.
    if keeps_layer_relevance(rule.analyzer) and rule.neuron_selection == "max_activation":
        kwargs["reverse_keep_tensors"] = True
    try:
        return analyzer_class(keras_model, **kwargs)
    except TypeError as exc:
        if "argument" in str(exc):
            raise LrpUsageError(f"{rule.where('params')}: analyzer '{rule.analyzer}' rejects them ({exc})") from None
        raise


def _reference_outputs(rule: Rule, keras_model, x: np.ndarray) -> np.ndarray:
    reference = np.broadcast_to(np.asarray(rule.params.get("reference_inputs", 0.0), dtype=np.float32), x.shape)
    return np.asarray(keras_model.predict(np.ascontiguousarray(reference), verbose=0), dtype=np.float64).reshape(
        len(x), -1
    )
