"""The numpy reference beside each analysis: built once per model, run once per analysis.

For every LRP and Deep Taylor analysis the reference (pytest_lrp.reference) splits
each layer's change into the mechanisms of the rule's formula (checks/leaks.py);
for rules with the `reference` check it also compares innvestigate's relevance with
the reference's, layer by layer (checks/reference.py). Both are reduced to small
summaries here, inside the analysis, so that no per-layer map outlives it.
"""

from __future__ import annotations

from ..base.lazy import np
from ..checks.comparison import ReferenceComparison, compare
from ..checks.reference_run import judge, layer_differences
from ..config.rulefile import Rule
from ..models.modelfile import ModelFile
from .known_bugs import bn_fusion_verdict


def run_reference(
    model: ModelFile,
    rule: Rule,
    x: np.ndarray,
    heatmaps: np.ndarray,
    outputs: np.ndarray,
    neurons: np.ndarray,
    errors: np.ndarray,
    layers: list,
    maps: dict,
):
    """(ReferenceComparison or None, LeakAccount or None) for one analysis of a Keras model (checks/reference_run.py)."""

    def adjust(reference_model, result, run, comparison):
        return _known_bn_bug(reference_model, rule, result, run, heatmaps, maps, layers, comparison)

    return judge(
        lambda: _reference_model(model),
        rule,
        x,
        heatmaps,
        outputs,
        neurons,
        errors,
        layers,
        maps,
        model.name,
        rule.analyzer,
        dict(rule.params),
        adjust=adjust,
    )


def _known_bn_bug(
    reference_model,
    rule: Rule,
    result,
    run,
    heatmaps: np.ndarray,
    maps: dict,
    layers: list,
    comparison: ReferenceComparison,
):
    """The result to judge innvestigate by: the exact reference, or, where innvestigate 2.1.2's
    BatchNormalization fusion bug matters on this model and innvestigate is not exact, the reference
    with the bug (comparison.known_bug then names it; known_bugs.py)."""
    from ..reference.explain import LRP_NAMES

    bn_layers = [layer.name for layer in reference_model.layers if layer.class_name == "BatchNormalization"]
    if not bn_layers or rule.analyzer not in LRP_NAMES:
        return result
    buggy = run("innvestigate")
    tolerance = rule.reference_tolerance
    exact_differs = not compare(
        "", result.heatmap, buggy.heatmap, tolerance, result.heatmap_bound + buggy.heatmap_bound
    ).within

    def matches(candidate) -> bool:
        places = [
            *layer_differences(candidate, maps, layers, rule),
            compare("", candidate.heatmap, heatmaps, tolerance, candidate.heatmap_bound),
        ]
        return all(place.within for place in places)

    bug, fixed = bn_fusion_verdict(exact_differs, matches(result), bn_layers)
    comparison.bug_fixed = fixed
    if bug is None:
        return result
    comparison.known_bug = bug.reason
    return buggy


def _reference_model(model: ModelFile):
    """The reference's copy of the model, built from its config and weights once per model file."""
    from ..reference import ReferenceModel

    if model.reference_model is None:
        try:
            weights = {layer.name: layer.get_weights() for layer in model.keras_model.layers}
            model.reference_model = ReferenceModel.from_keras(softmax_layers_as_activations(model.config), weights)
        except Exception as exc:  # remembered: every rule of this model skips with the same line
            model.reference_model = exc
    if isinstance(model.reference_model, Exception):
        raise model.reference_model.with_traceback(None)
    return model.reference_model


def softmax_layers_as_activations(config: dict) -> dict:
    """``config`` with each `Softmax()` layer written as the `Activation('softmax')` it computes (over the last axis).

    The analysis strips a final Softmax layer as it strips an Activation('softmax') (engine/upstream_fixes.py);
    the reference knows the latter only. A softmax inside the network never gets here (models/supported.py)."""
    inner = config.get("config", config) if "layers" not in config else config
    layers = inner.get("layers")
    if not isinstance(layers, list) or not any(_last_axis_softmax(entry) for entry in layers):
        return config
    rewritten = [
        {**entry, "class_name": "Activation", "config": {**entry["config"], "activation": "softmax"}}
        if _last_axis_softmax(entry)
        else entry
        for entry in layers
    ]
    if inner is config:
        return {**config, "layers": rewritten}
    return {**config, "config": {**inner, "layers": rewritten}}


def _last_axis_softmax(entry) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("class_name") == "Softmax"
        and entry.get("config", {}).get("axis", -1) in (-1, [-1])
    )
