"""The numpy reference beside each analysis: built once per model, run once per analysis.

For every LRP and Deep Taylor analysis the reference (pytest_lrp.reference) splits
each layer's change into the mechanisms of the rule's formula (checks/leaks.py);
for rules with the `reference` check it also compares innvestigate's relevance with
the reference's, layer by layer (checks/reference.py). Both are reduced to small
summaries here, inside the analysis, so that no per-layer map outlives it.
"""

from __future__ import annotations

import time

from ..base.lazy import np
from ..checks.comparison import FORWARD_RTOL, ReferenceComparison, compare
from ..checks.leaks import MECHANISMS, LayerLeaks, LeakAccount
from ..config.rulefile import LEAK_ANALYZER_FAMILIES, Rule
from ..models.modelfile import ModelFile
from .known_bugs import bn_fusion_verdict


def accounts_leaks(analyzer: str) -> bool:
    """The analyzers whose leaks have mechanisms: relevance propagation by a rule's formula."""
    return analyzer.split(".")[0] in LEAK_ANALYZER_FAMILIES


def wanted(rule: Rule) -> bool:
    return "reference" in rule.checks or accounts_leaks(rule.analyzer)


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
    """(ReferenceComparison or None, LeakAccount or None) for one analysis.

    ``outputs`` are the explained model's outputs (softmax stripped), ``errors`` sum(R) - target
    per sample, ``layers`` innvestigate's per-layer totals (LayerRelevance, output first) and
    ``maps`` its per-element relevance at each layer's output ({layer name: (array, names of the layers reading it)}).
    """
    from ..reference import UnsupportedLayer, UnsupportedRule, explain

    started = time.perf_counter()
    comparison = ReferenceComparison(tolerance=rule.reference_tolerance)
    try:
        reference_model = _reference_model(model)
        problem = _forward_problem(reference_model.predict(x), outputs, model)
        if problem:
            comparison.problem = problem
            return comparison, None
        # innvestigate's own choice of neuron: float32 and float64 may rank near-equal outputs differently.
        observed = _observed(reference_model, maps, layers)

        keep_maps = "reference" in rule.checks or any(
            layer.class_name == "BatchNormalization" for layer in reference_model.layers
        )

        def run(bn_fusion: str):
            return explain(
                reference_model,
                x.astype(np.float64),
                rule.analyzer,
                dict(rule.params),
                "index",
                neurons,
                keep_maps=keep_maps,
                observed=observed,
                bounds=True,
                bn_fusion=bn_fusion,
            )

        result = run("exact")
        result = _known_bn_bug(reference_model, rule, result, run, heatmaps, maps, layers, comparison)
    except (UnsupportedLayer, UnsupportedRule) as exc:
        comparison.skipped = f"the numpy reference cannot judge {rule.analyzer} on {model.name}: {exc}"
        return comparison, None
    except Exception as exc:  # a fault of the reference must not pass for one of innvestigate's analysis
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
        comparison.problem = (
            f"the numpy reference could not run {rule.analyzer} on {model.name} ({type(exc).__name__}: {first})"
        )
        return comparison, None
    comparison.formula_sums = result.heatmap.reshape(len(x), -1).sum(axis=1)
    comparison.rounding = result.rounding_total()
    comparison.heatmap_bound = result.heatmap_bound
    comparison.formula_heatmap = result.heatmap
    account = _account(result, layers, errors) if accounts_leaks(rule.analyzer) else None
    if "reference" in rule.checks:
        comparison.layers = _layer_differences(result, maps, layers, rule)
        comparison.heatmaps = compare(
            _heatmap_place(result, reference_model),
            result.heatmap,
            heatmaps,
            rule.reference_tolerance,
            result.heatmap_bound,
        )
    comparison.seconds = time.perf_counter() - started
    return comparison, account


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
            *_layer_differences(candidate, maps, layers, rule),
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


def _forward_problem(predicted: np.ndarray, outputs: np.ndarray, model: ModelFile) -> str | None:
    predicted = np.asarray(predicted, dtype=np.float64).reshape(outputs.shape)
    difference = float(np.max(np.abs(predicted - outputs), initial=0.0))
    scale = float(np.max(np.abs(outputs), initial=0.0))
    if np.isfinite(difference) and difference <= FORWARD_RTOL * (1.0 + scale):
        return None
    return (
        f"the numpy reference's forward pass differs from the model's outputs (max difference {difference:.3g} "
        f"on outputs up to {scale:.3g}); the reference has misread {model.name}, so it cannot judge its relevance"
    )


def _observed(reference_model, maps: dict, layers: list) -> dict:
    """innvestigate's relevance at each layer's output, under the reference's layer names."""
    names = _reference_names(list(reversed(reference_model.layers)), layers)
    return {names.get(name, name): kept for name, (kept, _) in maps.items()}


def _account(result, layers: list, errors: np.ndarray) -> LeakAccount:
    changes = _changes_by_layer(result.layers, layers)
    # Layers innvestigate's totals only give together (they read a common tensor) are accounted together.
    groups = {member: group for group in layers for member in group.members}
    accounted, merged = [], {}
    for layer in result.layers:
        # The formula's mechanisms for the relevance innvestigate had at this layer, where it kept it: its
        # change and the mechanisms then describe the same relevance. The reference's own relevance parts
        # from innvestigate's where an ill-conditioned neuron (an Add whose inputs nearly cancel, amplifying
        # float32 rounding) sends it elsewhere with the same total; its mechanisms below would charge the
        # layers there (a ZeroPadding2D's border share) with 'unexplained' for what they did right.
        own = layer.observed_mechanisms if layer.observed_mechanisms is not None else layer.mechanisms
        mechanisms = {
            name: np.asarray(own.get(name, 0.0), dtype=np.float64) * np.ones(len(errors)) for name in MECHANISMS
        }
        group = groups.get(layer.name)
        if group is None:
            accounted.append(LayerLeaks(layer.name, layer.class_name, layer.rule, changes.get(layer.name), mechanisms))
        elif group.name not in merged:
            merged[group.name] = LayerLeaks(
                group.name, group.cls, layer.rule, group.at_inputs - group.at_output, mechanisms
            )
            accounted.append(merged[group.name])
        else:
            joint = merged[group.name]
            joint.mechanisms = {name: joint.mechanisms[name] + mechanisms[name] for name in MECHANISMS}
            if layer.rule not in joint.rule.split("/"):
                joint.rule += f"/{layer.rule}"
    return LeakAccount(layers=accounted, errors=np.asarray(errors, dtype=np.float64), rounding=result.rounding_total())


def _reference_names(accounts: list, layers: list) -> dict:
    """{innvestigate's layer name: the reference's}: the same name, else the same position from the output
    and class (the analyzed copy of the model may rename its last layer when it strips a softmax)."""
    kept = [layer for layer in layers if layer.cls != "InputLayer"]
    accounts = [account for account in accounts if account.class_name != "InputLayer"]
    names = {account.name for account in accounts}
    found = {layer.name: layer.name for layer in kept if layer.name in names}
    for index, account in enumerate(accounts):
        if (
            account.name not in found.values()
            and index < len(kept)
            and kept[index].name not in names
            and kept[index].cls == account.class_name
        ):
            found[kept[index].name] = account.name
    return found


def _changes_by_layer(accounts: list, layers: list) -> dict:
    names = _reference_names(accounts, layers)
    return {names[layer.name]: layer.at_inputs - layer.at_output for layer in layers if layer.name in names}


def _heatmap_place(result, reference_model) -> str:
    """The heatmaps are what the layers reading the model input hand to it: name them."""
    accounts = {account.name: account for account in result.layers}
    readers = [
        accounts[layer.name]
        for layer in reference_model.layers
        if reference_model.input_name in layer.inputs and layer.name in accounts
    ]
    if not readers:
        return "the heatmaps"
    named = ", ".join(f"layer '{a.name}' ({a.class_name}, rule {a.rule})" for a in readers)
    return f"{named}: relevance handed to the input (the heatmaps)"


def _layer_differences(result, maps: dict, layers: list, rule: Rule) -> list:
    """From the output down: the relevance each layer hands to the layer below, innvestigate's vs the reference's."""
    accounts = {account.name: account for account in result.layers}
    names = _reference_names(result.layers, layers)
    maps = {
        names.get(name, name): (kept, [names.get(c, c) for c in consumers]) for name, (kept, consumers) in maps.items()
    }
    differences = []
    for account in result.layers:
        if account.name not in maps or not account.maps:
            continue
        kept, consumers = maps[account.name]
        reference_map = np.asarray(account.maps["out"], dtype=np.float64)
        if np.size(kept) != np.size(reference_map) or consumers[0] not in accounts:
            continue
        consumer = accounts[consumers[0]]
        shared = f" (with {', '.join(repr(c) for c in consumers[1:])})" if len(consumers) > 1 else ""
        where = f"layer '{consumer.name}' ({consumer.class_name}, rule {consumer.rule}): relevance it hands to '{account.name}'{shared}"
        differences.append(compare(where, reference_map, kept, rule.reference_tolerance, account.bound_out))
    return differences
