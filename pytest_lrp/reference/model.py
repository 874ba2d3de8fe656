"""A Keras model rebuilt from its config and weights as a graph of numpy layers (float64).

Only the layer types below are known; any other makes `ReferenceModel.from_keras` raise
`UnsupportedLayer` naming the layer, so a check can skip instead of comparing with a guess.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from .ops import AveragePool, Conv, Dense, MaxPool, Scale, Windows


class UnsupportedLayer(Exception):
    """A layer (or a layer setting) the reference has no implementation of."""

    def __init__(self, name: str, class_name: str, detail: str = ""):
        self.layer = name
        self.class_name = class_name
        extra = f": {detail}" if detail else ""
        super().__init__(f"layer {name!r} ({class_name}) has no reference{extra}")


KERNEL = {"Dense", "Conv1D", "Conv2D", "DepthwiseConv2D"}
MAX_POOL = {"MaxPooling1D", "MaxPooling2D"}
AVG_POOL = {"AveragePooling1D", "AveragePooling2D"}
GLOBAL_MAX = {"GlobalMaxPooling1D", "GlobalMaxPooling2D"}
GLOBAL_AVG = {"GlobalAveragePooling1D", "GlobalAveragePooling2D"}
IDENTITY = {
    "InputLayer",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
}
RESHAPE = {"Flatten", "Reshape"}
PADDING = {"ZeroPadding1D", "ZeroPadding2D"}
OTHER = {"BatchNormalization", "Add", "Concatenate", "Activation", "ReLU", "TorchMultiply", "TorchActivation"}
KNOWN = KERNEL | MAX_POOL | AVG_POOL | GLOBAL_MAX | GLOBAL_AVG | IDENTITY | RESHAPE | PADDING | OTHER
ACTIVATIONS = {"linear", "relu"}


def _hardsigmoid(x):
    return np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


# A PyTorch model's elementwise activation modules (pytest_lrp/pytorch/graph.py), forward only: zennit passes
# relevance through them unchanged; the gradient family has no derivative of them here and refuses the layer.
TORCH_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    "hardsigmoid": _hardsigmoid,
    "hardswish": lambda x: x * _hardsigmoid(x),
    "tanh": np.tanh,
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
}
# Largest forward pass ReferenceModel.forward keeps for the next rule (one 224x224 sample of a VGG16-sized
# network fits).
FORWARD_CACHE_BYTES = 1 << 30


def _activation_name(value) -> str:
    if value is None:
        return "linear"
    if isinstance(value, dict):  # Keras 3 serializes activations as objects
        value = value.get("config", {}).get("name", value.get("class_name"))
    return str(value).lower()


def _tuple(value, n: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),) * n


@dataclass
class Layer:
    name: str
    class_name: str
    config: dict
    weights: list
    inputs: list = field(default_factory=list)
    activation: str = "linear"
    op: Any = None  # ops.Dense, Conv, MaxPool or AveragePool; they share no base class
    kernel: np.ndarray | None = None
    bias: np.ndarray | None = None
    spatial: int = 0  # number of spatial axes of window layers
    variants: dict = field(default_factory=dict)  # the kernel's positive part, squares, ... (rules.terms)
    # BatchNormalization only (set by _setup): gamma, beta, mean, variance, epsilon, axis
    bn: tuple = field(init=False, repr=False, compare=False)

    def refuse(self, detail: str = "") -> NoReturn:
        raise UnsupportedLayer(self.name, self.class_name, detail)


def _producers(inbound) -> list[str]:
    """Names of the layers feeding one inbound node (tf.keras 2 lists or Keras 3 dicts)."""
    names: list[str] = []

    def walk(item):
        if isinstance(item, dict):
            if "keras_history" in item:
                names.append(item["keras_history"][0])
                return
            for value in item.values():
                walk(value)
        elif isinstance(item, (list, tuple)):
            if len(item) >= 3 and isinstance(item[0], str) and isinstance(item[1], int):
                names.append(item[0])
                return
            for value in item:
                walk(value)

    walk(inbound)
    return names


def _setup(layer: Layer) -> None:
    """Check the layer's settings and prepare its linear map; refuse what is not covered."""
    cfg, cls = layer.config, layer.class_name
    if cfg.get("data_format", "channels_last") not in ("channels_last", None) and not flattens_channels_first(layer):
        layer.refuse("only channels_last is covered")
    if cls in KERNEL or cls == "Activation":
        layer.activation = _activation_name(cfg.get("activation"))
        if layer.activation not in ACTIVATIONS | {"softmax"}:
            layer.refuse(f"activation {layer.activation!r}")
    if cls in KERNEL:
        layer.kernel = layer.weights[0]
        layer.bias = layer.weights[1] if cfg.get("use_bias", True) and len(layer.weights) > 1 else None
        if cls == "Dense":
            layer.op = Dense()
        else:
            n = 1 if cls == "Conv1D" else 2
            if cfg.get("groups", 1) != 1:
                layer.refuse("grouped convolution")
            windows = Windows(
                _tuple(cfg["kernel_size"], n),
                _tuple(cfg.get("strides", 1), n),
                cfg.get("padding", "valid"),
                _tuple(cfg.get("dilation_rate", 1), n),
            )
            layer.op = Conv(windows, depthwise=cls == "DepthwiseConv2D")
            layer.spatial = n
    elif cls in MAX_POOL | AVG_POOL:
        n = 1 if cls.endswith("1D") else 2
        pool = _tuple(cfg.get("pool_size", 2), n)
        strides = cfg.get("strides") or pool
        windows = Windows(pool, _tuple(strides, n), cfg.get("padding", "valid"))
        layer.op = MaxPool(windows) if cls in MAX_POOL else AveragePool(windows)
        layer.spatial = n
    elif cls == "TorchActivation":
        if cfg.get("activation") not in TORCH_ACTIVATIONS:
            layer.refuse(f"activation {cfg.get('activation')!r}")
    elif cls == "ReLU":
        if cfg.get("max_value") is not None or cfg.get("negative_slope", 0) or cfg.get("threshold", 0):
            layer.refuse("only the plain ReLU (no max_value, slope or threshold)")
    elif cls == "BatchNormalization":
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if isinstance(axis, (list, tuple)):
            layer.refuse("normalization over several axes")
        weights = list(layer.weights)
        gamma = weights.pop(0) if cfg.get("scale", True) else None
        beta = weights.pop(0) if cfg.get("center", True) else None
        mean, variance = weights
        layer.bn = (
            gamma if gamma is not None else np.ones_like(mean),
            beta if beta is not None else np.zeros_like(mean),
            mean,
            variance,
            float(cfg.get("epsilon", 1e-3)),
            int(axis),
        )
    elif cls not in KNOWN:
        layer.refuse()


def bn_affine(layer: Layer, fusion: str = "exact") -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization at inference as y = k * x + b.

    "exact" is the layer's own formula. "innvestigate" is what innvestigate 2.1.2's
    apply_mapping_to_fused_bn_layer builds (sqrt(variance**2 + eps), and the bias without
    gamma): kept only to show that the difference to innvestigate comes from there.
    """
    gamma, beta, mean, variance, eps, _ = layer.bn
    if fusion == "innvestigate":
        root = np.sqrt(variance**2 + eps)
        return gamma / root, beta - mean / root
    k = gamma / np.sqrt(variance + eps)
    return k, beta - mean * k


class ReferenceModel:
    """Layers in execution order; `predict` gives the pre-softmax outputs in float64."""

    def __init__(self, layers: list[Layer], input_name: str, output_name: str, sequential: bool):
        self.layers = layers
        self.by_name = {layer.name: layer for layer in layers}
        self.input_name = input_name
        self.output_name = output_name
        self.sequential = sequential
        self.dtype = next((layer.weights[0].dtype for layer in layers if layer.weights), np.dtype(np.float64))
        # (key, activations) of the last forward pass: the rules of one suite explain the same inputs
        # one after the other, and on a wide network the forward pass is a large part of a rule's time
        self._last_forward: tuple | None = None

    @classmethod
    def from_keras(cls, config: dict, weights: dict) -> ReferenceModel:
        if "config" in config and "class_name" in config and "layers" not in config:
            config = config["config"]
        entries = config["layers"]
        sequential = "input_layers" not in config
        layers: list[Layer] = []
        previous = None
        for entry in entries:
            cfg = entry.get("config", {})
            name = cfg.get("name") or entry.get("name")
            class_name = entry["class_name"]
            if class_name in ("Functional", "Sequential", "Model"):
                raise UnsupportedLayer(name, class_name, "nested models are not covered")
            layer = Layer(name, class_name, cfg, [np.asarray(w, dtype=np.float64) for w in weights.get(name, [])])
            if sequential:
                if previous is None and class_name != "InputLayer":
                    layers.append(Layer("input", "InputLayer", {}, []))
                    previous = "input"
                layer.inputs = [] if class_name == "InputLayer" else [previous]
                previous = name
            else:
                nodes = entry.get("inbound_nodes", [])
                if len(nodes) > 1:
                    raise UnsupportedLayer(name, class_name, "a layer used more than once")
                layer.inputs = _producers(nodes[0]) if nodes else []
            _setup(layer)
            layers.append(layer)
        if sequential:
            input_name, output_name = layers[0].name, layers[-1].name
        else:
            if len(config["input_layers"]) != 1 or len(config["output_layers"]) != 1:
                raise UnsupportedLayer(
                    config.get("name", "model"), "Functional", "only one input and one output are covered"
                )
            input_name = _producers(config["input_layers"])[0]
            output_name = _producers(config["output_layers"])[0]
        model = cls(layers, input_name, output_name, sequential)
        model._drop_final_softmax()
        return model

    @classmethod
    def from_layers(cls, layers: list[Layer], input_name: str, output_name: str) -> ReferenceModel:
        """A model read from another framework (pytest_lrp/pytorch/graph.py): layers in execution order, with their
        inputs, configs and weights as from_keras would make them (channels-last)."""
        for layer in layers:
            _setup(layer)
        return cls(layers, input_name, output_name, sequential=False)

    def _drop_final_softmax(self) -> None:
        out = self.by_name[self.output_name]
        if out.class_name == "Activation" and out.activation == "softmax":
            self.layers.remove(out)
            del self.by_name[out.name]
            self.output_name = out.inputs[0]
        elif out.activation == "softmax":
            out.activation = "linear"
        for layer in self.layers:
            if layer.activation == "softmax":
                layer.refuse("softmax is covered only as the last activation")

    def positively_homogeneous(self) -> bool:
        """f(t x) = t f(x) for every t > 0: no kernel layer with a non-zero bias and no BatchNormalization
        with a non-zero offset. Every other layer the reference accepts is homogeneous (ReLU and linear
        units, pooling, padding, reshapes, Add, Concatenate; a softmax only as the last activation, which is stripped)."""
        for layer in self.layers:
            if layer.class_name in ("TorchActivation", "TorchMultiply"):
                return False
            offset = bn_affine(layer)[1] if layer.class_name == "BatchNormalization" else layer.bias
            if offset is not None and np.any(offset):
                return False
        return True

    def astype(self, dtype) -> ReferenceModel:
        """A copy computing in another precision: float32 shows how much of a difference to
        innvestigate (float32) is rounding alone."""
        layers = []
        for layer in self.layers:
            copy = Layer(
                layer.name,
                layer.class_name,
                layer.config,
                [w.astype(dtype) for w in layer.weights],
                list(layer.inputs),
                layer.activation,
                layer.op,
                spatial=layer.spatial,
            )
            copy.kernel = None if layer.kernel is None else layer.kernel.astype(dtype)
            copy.bias = None if layer.bias is None else layer.bias.astype(dtype)
            if hasattr(layer, "bn"):
                copy.bn = tuple(v.astype(dtype) if isinstance(v, np.ndarray) else v for v in layer.bn)
            layers.append(copy)
        return ReferenceModel(layers, self.input_name, self.output_name, self.sequential)

    # ---- forward -------------------------------------------------------------------
    def forward(self, x: np.ndarray, *, products: bool = True, cache: bool = True) -> dict:
        """Every layer's output, in the model's precision (x is converted first, exactly: float32 -> float64).

        ``products`` also keeps each kernel layer's x @ W (before the bias) under name + ':xw' for the LRP
        rules; the gradient needs only the outputs (a ReLU's output is > 0 exactly where its input is).
        With ``cache``, the last pass is kept (read-only) and returned again for equal inputs; a pass
        larger than FORWARD_CACHE_BYTES is not kept, so the cache holds at most one such pass."""
        x = np.asarray(x, dtype=self.dtype)
        key = None
        if cache and products:
            key = (x.shape, hashlib.blake2b(np.ascontiguousarray(x).data, digest_size=16).digest())
            if self._last_forward is not None and self._last_forward[0] == key:
                return dict(self._last_forward[1])
        acts: dict = {self.input_name: x}
        for layer in self.layers:
            if layer.name == self.input_name:
                continue
            xs = [acts[p] for p in layer.inputs]
            acts[layer.name] = self._apply(layer, xs, acts, products)
        if key is not None:
            self._last_forward = None
            if sum(a.nbytes for a in acts.values()) <= FORWARD_CACHE_BYTES:
                acts[self.input_name] = x.copy()  # the caller's array may change after we return
                for value in acts.values():
                    value.flags.writeable = False
                self._last_forward = (key, acts)
                return dict(acts)
        return acts

    def predict(self, x: np.ndarray, cache: bool = True) -> np.ndarray:
        out = (self.forward(x) if cache else self.forward(x, products=False, cache=False))[self.output_name]
        return out.reshape(len(out), -1) if out.ndim > 2 else out

    def _apply(self, layer: Layer, xs: list, acts: dict, products: bool = True) -> np.ndarray:
        cls, cfg = layer.class_name, layer.config
        x: Any = xs[0] if xs else None
        if cls in KERNEL:
            xw = layer.op.forward(x, layer.kernel)
            if products:
                acts[layer.name + ":xw"] = xw  # the z and epsilon rules reuse it
                z = xw + layer.bias if layer.bias is not None else xw
            else:  # nothing else holds xw: in place
                z = xw
                if layer.bias is not None:
                    z += layer.bias
                return np.maximum(z, 0.0, out=z) if layer.activation == "relu" else z
            return activate(z, layer.activation)
        if cls in MAX_POOL:
            y, argmax = layer.op.forward(x)
            acts[layer.name + ":argmax"] = argmax
            return y
        if cls in AVG_POOL:
            return layer.op.forward(x)
        if cls in GLOBAL_MAX | GLOBAL_AVG:
            axes = tuple(range(1, x.ndim - 1))
            y = x.max(axis=axes, keepdims=True) if cls in GLOBAL_MAX else x.mean(axis=axes, keepdims=True)
            return y if cfg.get("keepdims", False) else y.reshape(len(x), -1)
        if cls in IDENTITY:
            return x
        if cls == "Flatten":
            return (np.moveaxis(x, -1, 1) if flattens_channels_first(layer) else x).reshape(len(x), -1)
        if cls == "Reshape":
            return x.reshape((len(x), *tuple(cfg["target_shape"])))
        if cls in PADDING:
            return np.pad(x, [(0, 0), *padding_of(layer, x.ndim - 2), (0, 0)])
        if cls == "Activation":
            return activate(x, layer.activation)
        if cls == "ReLU":
            return np.maximum(x, 0.0)
        if cls == "TorchActivation":
            return TORCH_ACTIVATIONS[cfg["activation"]](x)
        if cls == "TorchMultiply":
            return xs[0] * xs[1]
        if cls == "BatchNormalization":
            k, b = bn_affine(layer)
            scale = Scale(layer.bn[-1], x.ndim)
            return scale.forward(x, k) + scale.forward(np.ones_like(x), b)
        if cls == "Add":
            return sum(xs[1:], xs[0].copy())
        if cls == "Concatenate":
            return np.concatenate(xs, axis=cfg.get("axis", -1))
        layer.refuse()  # pragma: no cover - _setup refused it already

    # ---- structure used by the rule choice ---------------------------------------------
    def keras_layers(self) -> list[Layer]:
        """model.layers as Keras lists them (Sequential models leave the InputLayer out)."""
        if self.sequential:
            return [layer for layer in self.layers if layer.class_name != "InputLayer"]
        return list(self.layers)

    def is_input_layer(self, layer: Layer) -> bool:
        """innvestigate's is_input_layer: all inputs come from the model input, looking
        through Flatten/Reshape/Permute."""
        pending, seen = list(layer.inputs), set()
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            producer = self.by_name[name]
            if producer.class_name in ("Flatten", "Reshape", "Permute"):
                pending.extend(producer.inputs)
            elif producer.class_name != "InputLayer":
                return False
        return bool(layer.inputs)


def flattens_channels_first(layer: Layer) -> bool:
    """Flatten(data_format="channels_first"): the channels axis moves before the spatial ones first, so the
    flat order is (channels, *spatial), as in a channels-first framework (a PyTorch model read in this layout)."""
    return layer.class_name == "Flatten" and layer.config.get("data_format") == "channels_first"


def activate(z: np.ndarray, name: str) -> np.ndarray:
    return np.maximum(z, 0.0) if name == "relu" else z


def padding_of(layer: Layer, n: int) -> list[tuple[int, int]]:
    value = layer.config.get("padding", 1)
    if isinstance(value, int):
        return [(value, value)] * n
    out = []
    for item in value:
        out.append((int(item), int(item)) if isinstance(item, int) else (int(item[0]), int(item[1])))
    if n == 1 and len(out) == 2 and isinstance(value[0], int):
        return [(int(value[0]), int(value[1]))]
    return out
