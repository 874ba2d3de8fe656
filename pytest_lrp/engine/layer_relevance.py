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
    """Layers from the output to the input; the last entry is the model input itself.

    innvestigate keeps one array per tensor, the relevance summed over all the layers reading
    it, so where a tensor feeds several layers (a residual block's input feeds its first
    convolution and its Add) no single one of them can be told what it received from that
    tensor. Such layers are reported together, as one entry whose change is theirs combined
    (``members`` names them), instead of charging one of them with the others' relevance.
    """
    kept = getattr(analyzer, "_reversed_tensors", None)
    if not kept:
        return []
    totals = {key: _per_sample(array, len(heatmap_sums)) for key, array in kept}
    graph = inn.backend.graph.get_model_execution_graph(keras_model)
    nodes = [graph[nid] for nid in sorted(k for k in graph if k is not None)]

    # The array kept for a tensor sits under the key (consumer node, input index) of one of its
    # consumers; find it whichever consumer that is.
    at_tensor, readers = {}, {}
    for node in nodes:
        for index, tensor in enumerate(node["Xs"]):
            readers.setdefault(id(tensor), []).append(node["nid"])
            if (node["nid"], index) in totals:
                at_tensor[id(tensor)] = totals[(node["nid"], index)]
    groups = _reader_groups(nodes, readers)
    result = []
    for members in sorted(groups, key=max, reverse=True):
        member_nodes = [graph[nid] for nid in sorted(members, reverse=True)]
        inputs = {id(tensor) for node in member_nodes for tensor in node["Xs"]}
        outputs = {id(tensor) for node in member_nodes for tensor in node["Ys"]}
        handed_down = [at_tensor[t] for t in inputs - outputs if t in at_tensor]
        if not handed_down:
            continue
        received = [at_tensor.get(t, output_relevance) for t in outputs - inputs]
        layers = [node["layer"] for node in member_nodes]
        result.append(
            LayerRelevance(
                name=" + ".join(layer.name for layer in layers),
                cls=" + ".join(type(layer).__name__ for layer in layers),
                at_output=np.sum(received, axis=0),
                at_inputs=np.sum(handed_down, axis=0),
                members=tuple(layer.name for layer in layers) if len(layers) > 1 else (),
            )
        )
    if result:
        input_layer = keras_model.layers[0] if type(keras_model.layers[0]).__name__ == "InputLayer" else None
        name = input_layer.name if input_layer is not None else "input"
        result.append(LayerRelevance(name=name, cls="InputLayer", at_output=heatmap_sums, at_inputs=heatmap_sums))
    return result


def _reader_groups(nodes: list, readers: dict) -> list:
    """Sets of node ids: the nodes that read a common tensor (transitively) form one set."""
    parent = {node["nid"]: node["nid"] for node in nodes}

    def root(nid):
        while parent[nid] != nid:
            parent[nid] = parent[parent[nid]]
            nid = parent[nid]
        return nid

    for nids in readers.values():
        for other in nids[1:]:
            parent[root(other)] = root(nids[0])
    groups = {}
    for nid in parent:
        groups.setdefault(root(nid), set()).add(nid)
    return list(groups.values())


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
