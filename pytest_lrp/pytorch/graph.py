"""A PyTorch module read into the numpy reference's layers, channels-last, as zennit's canonizers leave it.

torch.fx gives the graph: every module call and every functional operation with its inputs; a shape pass on
one sample gives the sizes adaptive pooling needs. Modules become the reference's layers under their own
names (``layer1.0.conv1``), so that the relevance recorded per module (layers.py) meets the reference's
layer of the same name; functional operations are named by their owner and fx's name (``layer1.0: add``).
Tensors are channels-last in the reference: a convolution's weight (O, I, kh, kw) is read as (kh, kw, I, O),
a Linear's (O, I) as (I, O), and a Flatten of a channels-first tensor keeps torch's order of its elements.

zennit's BatchNorm merge (SequentialMergeBatchNorm, and the ResNet and VGG canonizers that include it) folds a
BatchNorm into the convolution or linear layer that comes right before it among the module tree's leaves
(zennit's own criterion), leaving the BatchNorm an identity; the ResNet canonizers turn the addition of each
torchvision BasicBlock and Bottleneck into zennit's Sum, which the reference marks ``canonized``.
Anything the reference has no layer for raises UnsupportedLayer naming it: the reference check then skips
with that line.
"""

from __future__ import annotations

import operator

from ..base.lazy import np
from ..reference import Layer, ReferenceModel, UnsupportedLayer
from .runtime import library, torch

MERGING = ("SequentialMergeBatchNorm", "ResNetCanonizer", "VGGCanonizer")
SUMMING = ("ResNetCanonizer", "ResNetBasicBlockCanonizer", "ResNetBottleneckCanonizer")
RESIDUAL_BLOCKS = ("BasicBlock", "Bottleneck")
LINEAR_MODULES = ("Conv1d", "Conv2d", "Conv3d", "Linear")
BATCH_NORMS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "FrozenBatchNorm2d")
IDENTITY_MODULES = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Identity", "StochasticDepth")
# elementwise activation modules zennit passes relevance through (zennit.types.Activation), by their reference name
ACTIVATION_MODULES = {
    "Sigmoid": "sigmoid",
    "SiLU": "silu",
    "Hardsigmoid": "hardsigmoid",
    "Hardswish": "hardswish",
    "Tanh": "tanh",
    "ReLU6": "relu6",
}
ADD = {operator.add, operator.iadd, "add", "add_", "__add__", "__iadd__"}
MUL = {operator.mul, operator.imul, "mul", "mul_", "__mul__", "__imul__"}
RELU = {"relu", "relu_"}
FLATTENING = {"flatten", "view", "reshape"}
SKIPPED = {"size", "getattr", "dim"}  # values, not tensors: only the arguments of a reshape use them


def channels_last(array: np.ndarray) -> np.ndarray:
    """A channels-first array (N, C, *spatial) in the reference's layout (N, *spatial, C)."""
    array = np.asarray(array)
    return np.moveaxis(array, 1, -1) if array.ndim > 2 else array


def channels_first(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    return np.moveaxis(array, -1, 1) if array.ndim > 2 else array


def reference_model(module, sample_shape: tuple, canonizers: tuple = ()):
    """The reference's copy of ``module`` (eval mode, on any device) for inputs of ``sample_shape`` (no batch axis)."""
    t = torch()
    fx = library("torch.fx")
    try:
        traced = fx.symbolic_trace(module)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedLayer("model", type(module).__name__, f"torch.fx cannot trace it ({first})") from None
    device = next((p.device for p in module.parameters()), t.device("cpu"))
    library("torch.fx.passes.shape_prop").ShapeProp(traced).propagate(t.zeros((1, *sample_shape), device=device))
    modules = dict(module.named_modules())
    order = {name: index for index, name in enumerate(modules)}
    merged = _merged_batch_norms(module, modules) if set(canonizers) & set(MERGING) else {}
    summing = bool(set(canonizers) & set(SUMMING))
    names: dict = {}  # fx node -> the reference layer holding its value
    layers: list = []
    called: dict = {}
    input_name = output_name = None
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            if input_name is not None:
                raise UnsupportedLayer(node.name, "input", "only one input is covered")
            input_name = names[node] = "input"
            layers.append(Layer("input", "InputLayer", {}, []))
            continue
        if node.op == "output":
            source = node.args[0]
            if source not in names:
                raise UnsupportedLayer("output", "output", "only one tensor output is covered")
            output_name = names[source]
            continue
        if node.op == "get_attr":
            raise UnsupportedLayer(node.name, "parameter", "a parameter used outside its module")
        kind = _kind(node)
        if node.op in ("call_function", "call_method") and kind in SKIPPED:
            continue
        inputs = [names[arg] for arg in node.all_input_nodes if arg in names]
        if node.op == "call_module":
            # a module called again (torchvision's blocks reuse their ReLU) is a layer of its own, named as the
            # per-module relevance names its calls: ``layer1.0.relu``, ``layer1.0.relu#2``
            called[node.target] = called.get(node.target, 0) + 1
            layer = _module_layer(node, modules[node.target], merged)
            if called[node.target] > 1:
                layer.name = layer.config["name"] = f"{node.target}#{called[node.target]}"
            layer.config["order"] = order[node.target]
        else:
            layer = _function_layer(node, kind, inputs, summing)
        if layer.class_name == "Dropout" and len(inputs) == 1 and ": " in layer.name:
            names[node] = inputs[0]  # a value-preserving operation outside modules: no layer of its own
            continue
        layer.inputs = inputs
        layers.append(layer)
        names[node] = layer.name
    if input_name is None or output_name is None:
        raise UnsupportedLayer("model", type(module).__name__, "no input or output found")
    return ReferenceModel.from_layers(layers, input_name, output_name)


def _kind(node) -> str:
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    if target in ADD or name in ADD:
        return "add"
    if target in MUL or name in MUL:
        return "mul"
    return name.strip("_") if name.strip("_") in RELU | FLATTENING | SKIPPED else name


def _owner(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack)[-1] if stack else "forward"


def _shape(node) -> tuple:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()


def _numpy(tensor) -> np.ndarray:
    return tensor.detach().double().cpu().numpy()


def _merged_batch_norms(module, modules: dict) -> dict:
    """{linear module name: batch norm module}: zennit's pairs, a BatchNorm right after a linear leaf."""
    leaves = [(name, m) for name, m in modules.items() if name and next(iter(m.children()), None) is None]
    pairs = {}
    for (previous, linear), (name, norm) in zip(leaves, leaves[1:]):
        if type(linear).__name__ in LINEAR_MODULES and type(norm).__name__ in BATCH_NORMS:
            pairs[previous] = (name, norm)
    return pairs


def _pairs(value, n: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _module_layer(node, sub, merged: dict):
    name, cls = node.target, type(sub).__name__
    config: dict = {"name": name, "torch_class": cls}

    def refuse(detail: str = ""):
        raise UnsupportedLayer(name, cls, detail)

    if cls in ("Conv2d", "Linear"):
        weight = _numpy(sub.weight)
        bias = _numpy(sub.bias) if sub.bias is not None else None
        if name in merged:  # zennit's merge: w k, (b - mean) k + beta, with k = gamma / sqrt(var + eps)
            _, norm = merged[name]
            k = _numpy(norm.weight) / np.sqrt(_numpy(norm.running_var) + float(norm.eps))
            weight = weight * k.reshape((-1,) + (1,) * (weight.ndim - 1))
            bias = ((bias if bias is not None else 0.0) - _numpy(norm.running_mean)) * k + _numpy(norm.bias)
        config.update(use_bias=bias is not None, activation="linear")
        if cls == "Linear":
            return Layer(name, "Dense", config, [weight.T] + ([bias] if bias is not None else []))
        depthwise = sub.groups == sub.in_channels and sub.groups > 1
        if sub.groups != 1 and not depthwise:
            refuse("grouped convolution")
        if sub.padding_mode != "zeros":
            refuse(f"padding_mode {sub.padding_mode!r}")
        config.update(
            kernel_size=tuple(sub.kernel_size),
            strides=tuple(sub.stride),
            dilation_rate=tuple(sub.dilation),
            padding=_padding(sub.padding, sub.kernel_size, sub.dilation),
        )
        if depthwise:  # (C * m, 1, kh, kw), output channel c * m + j: the reference's (kh, kw, C, m), c-major
            kernel = weight.reshape(sub.in_channels, -1, *weight.shape[2:]).transpose(2, 3, 0, 1)
            return Layer(name, "DepthwiseConv2D", config, [kernel] + ([bias] if bias is not None else []))
        kernel = weight.transpose(2, 3, 1, 0)
        return Layer(name, "Conv2D", config, [kernel] + ([bias] if bias is not None else []))
    if cls in BATCH_NORMS:
        if name in {norm_name for norm_name, _ in merged.values()}:
            return Layer(name, "Dropout", config, [])  # merged into the layer before: an identity
        if getattr(sub, "running_mean", None) is None:
            refuse("BatchNorm without running statistics")
        mean, var = _numpy(sub.running_mean), _numpy(sub.running_var)
        gamma = _numpy(sub.weight) if getattr(sub, "weight", None) is not None else np.ones_like(mean)
        beta = _numpy(sub.bias) if getattr(sub, "bias", None) is not None else np.zeros_like(mean)
        config.update(axis=-1, epsilon=float(sub.eps))
        return Layer(name, "BatchNormalization", config, [gamma, beta, mean, var])
    if cls == "ReLU":
        return Layer(name, "Activation", {**config, "activation": "relu"}, [])
    if cls in ACTIVATION_MODULES:
        return Layer(name, "TorchActivation", {**config, "activation": ACTIVATION_MODULES[cls]}, [])
    if cls == "MaxPool2d":
        if _pairs(sub.dilation, 2) != (1, 1):
            refuse("dilated pooling")
        config.update(
            pool_size=_pairs(sub.kernel_size, 2),
            strides=_pairs(sub.stride or sub.kernel_size, 2),
            padding=[(p, p) for p in _pairs(sub.padding, 2)],
        )
        _same_size(node, config, refuse, sub.ceil_mode)
        return Layer(name, "MaxPooling2D", config, [])
    if cls == "AvgPool2d":
        if any(_pairs(sub.padding, 2)) or sub.divisor_override:
            refuse("average pooling with padding or a divisor")
        config.update(pool_size=_pairs(sub.kernel_size, 2), strides=_pairs(sub.stride or sub.kernel_size, 2))
        _same_size(node, config, refuse, sub.ceil_mode)
        return Layer(name, "AveragePooling2D", config, [])
    if cls == "AdaptiveAvgPool2d":
        return _adaptive(node, sub, config, refuse)
    if cls == "Flatten":
        if sub.start_dim != 1 or sub.end_dim != -1:
            refuse("a Flatten other than from axis 1 to the end")
        return Layer(name, "Flatten", {**config, "data_format": "channels_first"}, [])
    if cls in IDENTITY_MODULES:
        return Layer(name, "Dropout", config, [])
    refuse()


def _padding(padding, kernel, dilation) -> list:
    if padding == "valid":
        return [(0, 0)] * len(kernel)
    if padding == "same":  # torch puts the odd cell after, as TensorFlow does
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return [(total // 2, total - total // 2) for total in totals]
    return [(int(p), int(p)) for p in padding]


def _same_size(node, config: dict, refuse, ceil_mode: bool) -> None:
    """ceil_mode only matters where it adds a window at the end: refuse it there."""
    if not ceil_mode:
        return
    shape = next(_shape(arg) for arg in node.all_input_nodes)
    pads = config.get("padding") or [(0, 0)] * 2
    floor = [
        (n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in zip(shape[2:], pads, config["pool_size"], config["strides"])
    ]
    if tuple(floor) != _shape(node)[2:]:
        refuse("ceil_mode adds windows")


def _adaptive(node, sub, config: dict, refuse):
    shape = next(_shape(arg) for arg in node.all_input_nodes)
    size = shape[2:]
    out = tuple(n if o is None else int(o) for n, o in zip(size, _pairs(sub.output_size, 2)))
    if out == (1, 1):
        return Layer(config["name"], "GlobalAveragePooling2D", {**config, "keepdims": True}, [])
    if all(n % o == 0 for n, o in zip(size, out)):
        pool = tuple(n // o for n, o in zip(size, out))
        return Layer(config["name"], "AveragePooling2D", {**config, "pool_size": pool, "strides": pool}, [])
    refuse(f"adaptive pooling from {tuple(size)} to {out}")


def _function_layer(node, kind: str, inputs: list, summing: bool):
    owner = _owner(node)
    name = f"{owner}: {node.name}"
    tensors = [arg for arg in node.args if hasattr(arg, "op")]
    if kind == "add":
        if len(tensors) != 2 or len(inputs) != 2:
            raise UnsupportedLayer(name, "add", "an addition of a tensor and a constant")
        block = (node.meta.get("nn_module_stack") or {}).get(owner)
        block_class = getattr(block[1], "__name__", str(block[1])) if isinstance(block, tuple) else ""
        canonized = summing and block_class.rsplit(".", 1)[-1] in RESIDUAL_BLOCKS
        return Layer(name, "Add", {"name": name, "canonized": canonized}, [])
    if kind == "mul":
        if len(tensors) != 2 or len(inputs) != 2:
            raise UnsupportedLayer(name, "mul", "a product of a tensor and a constant")
        return Layer(name, "TorchMultiply", {"name": name}, [])
    if kind in RELU:
        return Layer(name, "ReLU", {"name": name}, [])
    if kind in FLATTENING or kind in ("dropout", "stochastic_depth"):  # the latter two: identities in eval mode
        shape, source = _shape(node), [_shape(arg) for arg in tensors][:1]
        if kind in ("dropout", "stochastic_depth") or (source and shape == source[0]):
            return Layer(name, "Dropout", {"name": name}, [])
        if len(shape) == 2 and source and shape[0] == source[0][0]:
            return Layer(name, "Flatten", {"name": name, "data_format": "channels_first"}, [])
        raise UnsupportedLayer(name, kind, f"a reshape from {source[0] if source else '?'} to {shape}")
    if kind == "adaptive_avg_pool2d":  # DenseNet's forward; no module, so zennit passes it as a plain gradient
        size = _shape(tensors[0])[2:] if tensors else ()
        out = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        if tuple(_pairs(out, 2)) != (1, 1) or len(size) != 2:
            raise UnsupportedLayer(name, kind, f"adaptive pooling to {out}")
        return Layer(name, "GlobalAveragePooling2D", {"name": name, "keepdims": True, "functional": True}, [])
    if kind == "cat":
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if dim != 1:
            raise UnsupportedLayer(name, "cat", "a concatenation other than of channels")
        return Layer(name, "Concatenate", {"name": name, "axis": -1}, [])
    raise UnsupportedLayer(name, kind, f"the functional operation {kind} in {owner}")
