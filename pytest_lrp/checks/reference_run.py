"""The numpy reference beside an analysis, for either backend: run once, reduced to small summaries.

For every relevance-propagating analysis the reference (pytest_lrp.reference) splits each layer's change
into the mechanisms of the rule's formula (checks/leaks.py); for rules with the `reference` check it also
compares the implementation's relevance with the reference's, layer by layer (checks/reference.py). Both
are summarised here, inside the analysis, so that no per-layer map outlives it. The backends build the
reference's copy of their model and hand over their per-layer maps in its layout and under its layer names.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..base.lazy import np
from ..config.rulefile import Rule, accounts_leaks
from ..config.torch_analyzers import implementation_of
from .comparison import FORWARD_RTOL, ReferenceComparison, compare
from .leaks import MECHANISMS, LayerLeaks, LeakAccount


def wanted(rule: Rule) -> bool:
    return "reference" in rule.checks or accounts_leaks(rule.analyzer)


def judge(
    build: Callable,
    rule: Rule,
    x: np.ndarray,
    heatmaps: np.ndarray,
    outputs: np.ndarray,
    neurons: np.ndarray,
    errors: np.ndarray,
    layers: list,
    maps: dict,
    model_name: str,
    analyzer: str,
    params: dict,
    *,
    positive_head: bool = False,
    adjust: Callable | None = None,
):
    """(ReferenceComparison or None, LeakAccount or None) for one analysis.

    ``build()`` gives the reference's copy of the model; ``analyzer`` and ``params`` are the rule as the
    reference names it. ``outputs`` are the explained model's outputs (softmax stripped), ``errors``
    sum(R) - target per sample, ``layers`` the implementation's per-layer totals (LayerRelevance, output first)
    and ``maps`` its per-element relevance at each layer's output ({layer name: (array, names of the layers
    reading it)}). ``adjust(reference_model, result, run, comparison)`` may replace the result the
    implementation is judged by (a known upstream bug, engine/known_bugs.py).
    """
    from ..reference import UnsupportedLayer, UnsupportedRule, explain

    started = time.perf_counter()
    comparison = ReferenceComparison(tolerance=rule.reference_tolerance)
    try:
        reference_model = build()
        problem = forward_problem(reference_model.predict(x), outputs, model_name)
        if problem:
            comparison.problem = problem
            return comparison, None
        # the implementation's own choice of neuron: float32 and float64 may rank near-equal outputs differently.
        observed = _observed(reference_model, maps, layers)
        keep_maps = "reference" in rule.checks or any(
            layer.class_name == "BatchNormalization" for layer in reference_model.layers
        )

        def run(bn_fusion: str):
            return explain(
                reference_model,
                x.astype(np.float64),
                analyzer,
                dict(params),
                "index",
                neurons,
                keep_maps=keep_maps,
                observed=observed,
                bounds=True,
                bn_fusion=bn_fusion,
                positive_head=positive_head,
            )

        result = run("exact")
        if adjust is not None:
            result = adjust(reference_model, result, run, comparison)
    except (UnsupportedLayer, UnsupportedRule) as exc:
        comparison.skipped = f"the numpy reference cannot judge {rule.analyzer} on {model_name}: {exc}"
        return comparison, None
    except Exception as exc:  # a fault of the reference must not pass for one of the implementation's
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
        comparison.problem = (
            f"the numpy reference could not run {rule.analyzer} on {model_name} ({type(exc).__name__}: {first})"
        )
        return comparison, None
    comparison.formula_sums = result.heatmap.reshape(len(x), -1).sum(axis=1)
    comparison.rounding = result.rounding_total()
    comparison.heatmap_bound = result.heatmap_bound
    comparison.formula_heatmap = result.heatmap
    implementation = implementation_of(rule.analyzer)
    account = _account(result, layers, errors, implementation) if accounts_leaks(rule.analyzer) else None
    if "reference" in rule.checks:
        comparison.layers = layer_differences(result, maps, layers, rule)
        comparison.heatmaps = compare(
            _heatmap_place(result, reference_model),
            result.heatmap,
            heatmaps,
            rule.reference_tolerance,
            result.heatmap_bound,
            implementation,
        )
    comparison.seconds = time.perf_counter() - started
    return comparison, account


def forward_problem(predicted: np.ndarray, outputs: np.ndarray, model_name: str) -> str | None:
    predicted = np.asarray(predicted, dtype=np.float64).reshape(outputs.shape)
    difference = float(np.max(np.abs(predicted - outputs), initial=0.0))
    scale = float(np.max(np.abs(outputs), initial=0.0))
    if np.isfinite(difference) and difference <= FORWARD_RTOL * (1.0 + scale):
        return None
    return (
        f"the numpy reference's forward pass differs from the model's outputs (max difference {difference:.3g} "
        f"on outputs up to {scale:.3g}); the reference has misread {model_name}, so it cannot judge its relevance"
    )


def _observed(reference_model, maps: dict, layers: list) -> dict:
    """innvestigate's relevance at each layer's output, under the reference's layer names."""
    names = _reference_names(list(reversed(reference_model.layers)), layers)
    return {names.get(name, name): kept for name, (kept, _) in maps.items()}


def _account(result, layers: list, errors: np.ndarray, implementation: str = "innvestigate") -> LeakAccount:
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
    return LeakAccount(
        layers=accounted,
        errors=np.asarray(errors, dtype=np.float64),
        rounding=result.rounding_total(),
        implementation=implementation,
    )


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


def layer_differences(result, maps: dict, layers: list, rule: Rule) -> list:
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
        differences.append(
            compare(
                where,
                reference_map,
                kept,
                rule.reference_tolerance,
                account.bound_out,
                implementation_of(rule.analyzer),
            )
        )
    return differences
