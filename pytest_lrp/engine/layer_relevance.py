"""Where relevance leaks: relevance totals at every layer, mapped to Keras layers.

With ``reverse_keep_tensors=True`` innvestigate keeps the relevance arriving at
every *input* tensor of every node, keyed ``(node id, input index)``. Node ids
count the layers in execution order without the InputLayers, so they are not
indices into ``model.layers``; innvestigate's own execution graph of the
analyzed model gives the mapping, whatever the model's shape (Sequential or
functional, with or without an explicit InputLayer).
"""

from __future__ import annotations

from ..base.lazy import np
from ..checks.layers import LayerRelevance


def layer_relevance(inn, analyzer, keras_model, heatmap_sums: np.ndarray, output_relevance: np.ndarray) -> list:
    """Layers from the output to the input; the last entry is the model input itself."""
    kept = getattr(analyzer, "_reversed_tensors", None)
    if not kept:
        return []
    totals = {key: _per_sample(array, len(heatmap_sums)) for key, array in kept}
    graph = inn.backend.graph.get_model_execution_graph(keras_model)
    nodes = [graph[nid] for nid in sorted(k for k in graph if k is not None)]

    # Relevance arriving at the tensor a node produced is stored under the key of
    # the (first) node consuming that tensor; summed over all consumers already.
    at_output = {}
    for node in nodes:
        for index, creator in enumerate(node["Xs_nids"]):
            if (node["nid"], index) in totals:
                at_output.setdefault(creator, totals[(node["nid"], index)])
    result = []
    for node in reversed(nodes):
        handed_down = [totals[(node["nid"], i)] for i in range(len(node["Xs"])) if (node["nid"], i) in totals]
        if not handed_down:
            continue
        received = at_output.get(node["nid"], output_relevance)
        result.append(
            LayerRelevance(
                name=node["layer"].name,
                cls=type(node["layer"]).__name__,
                at_output=received,
                at_inputs=np.sum(handed_down, axis=0),
            )
        )
    if result:
        input_layer = keras_model.layers[0] if type(keras_model.layers[0]).__name__ == "InputLayer" else None
        name = input_layer.name if input_layer is not None else "input"
        result.append(LayerRelevance(name=name, cls="InputLayer", at_output=heatmap_sums, at_inputs=heatmap_sums))
    return result


def layer_maps(inn, analyzer, keras_model) -> dict:
    """innvestigate's element-wise relevance at each layer's output: {layer name: (array, names of its consumers)}.

    The value kept for a node's input is the relevance arriving at that tensor from all its
    consumers, so it is keyed here by the layer that produced the tensor. The model input is
    left out: the heatmap is its relevance.
    """
    kept = getattr(analyzer, "_reversed_tensors", None)
    if not kept:
        return {}
    arrays = dict(kept)
    graph = inn.backend.graph.get_model_execution_graph(keras_model)
    maps = {}
    for nid in sorted(k for k in graph if k is not None):
        node = graph[nid]
        for index, creator in enumerate(node["Xs_nids"]):
            if (nid, index) in arrays and creator in graph and creator is not None:
                entry = maps.setdefault(graph[creator]["layer"].name, (np.asarray(arrays[(nid, index)]), []))
                entry[1].append(node["layer"].name)
    return maps


def _per_sample(array, samples: int) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 0 or array.shape[0] != samples:
        return np.full(samples, np.nan)
    return array.reshape(samples, -1).sum(axis=1, dtype=np.float64)
