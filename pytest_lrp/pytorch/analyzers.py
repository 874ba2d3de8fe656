"""A rule's analyzer from zennit or captum, as a function from a batch to its outputs and heatmaps.

Each library is used as its documentation shows; what pytest-lrp adds is kept here, named and scoped:
- zennit (1.0; 0.5 on Python < 3.11.11): the relevance put on the output is the explained output itself
  (zennit's default is 1), so that the heatmap sums to it; ``zennit.rule.<name>`` is one rule on every
  convolution and linear layer with zennit's own base layer map (activations pass, sums and average pooling
  normalised, BatchNorm passed).
- captum (0.9): ``LRP`` raises on any module without a rule. pytest-lrp attaches the rule the user named to
  every layer captum has rules for, and refuses, as a skipped test naming the module, anything else but the
  value-preserving modules (Flatten, Unflatten, Identity). Those take neither captum's rules nor its
  activation hooks (both may not change a tensor's shape); between layers captum's gradient is the relevance
  itself, which a reshape passes unchanged, so captum must only not look at them: for the run each gets a
  placeholder child that is never called (captum collects leaf modules only), removed after, as are the
  rules, so that no rule of one test stays on the module for the next (tests/test_pytorch.py checks both).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import pytest

from ..base.errors import LrpUsageError
from ..base.lazy import np
from ..config.torch_analyzers import ZENNIT_COMPOSITES, ZENNIT_RULES
from .layers import ModuleTracker, captum_layers, captum_maps
from .runtime import library, torch
from .upstream_fixes import batch_norm_merge_with_positive_eps

VALUE_PRESERVING = ("Flatten", "Unflatten", "Identity")
PLACEHOLDER = "_lrp_captum_placeholder"


@dataclass
class Run:
    heatmaps: np.ndarray
    layers: list
    outputs: np.ndarray  # the explained model's outputs (float64), from the attribution's own forward pass
    neurons: np.ndarray  # the explained output per sample, as the selector chose it from ``outputs``
    maps: dict = field(default_factory=dict)  # {module name: relevance at its output}, where layers are kept


def runner(rule, module, device: str):
    """``run(batch, select, keep_layers) -> Run`` for ``rule``: ``select(outputs) -> neurons`` picks the explained
    output of each sample from the forward pass the attribution makes anyway (zennit's), or from one of its own;
    refusals raise before anything runs."""
    family, _, name = rule.analyzer.partition(".")
    params = dict(rule.params)
    reference = float(params.pop("reference_inputs", 0.0))
    if family == "zennit":
        params.pop("canonizers", None)
        canonizers = _canonizers(rule, canonizer_names(rule, module))
        if name == "gradient":
            return _zennit_attributor(module, device, "Gradient", canonizers, {}, reference)
        if name == "integrated_gradients":
            return _zennit_attributor(module, device, "IntegratedGradients", canonizers, params, reference)
        return _zennit_lrp(rule, name, module, device, canonizers, params)
    if name == "lrp":
        return _captum_lrp(rule, module, device, params)
    return _captum_attribution(name, module, device, params, reference)


def forward(module, batch: np.ndarray, device: str) -> np.ndarray:
    """The module's outputs for ``batch``, one row per sample (float64)."""
    t = torch()
    with t.no_grad():
        out = module(t.as_tensor(np.ascontiguousarray(batch), dtype=t.float32, device=device))
    return out.detach().double().cpu().numpy().reshape(len(batch), -1)


def _tensor(batch: np.ndarray, device: str):
    return torch().as_tensor(np.ascontiguousarray(batch), dtype=torch().float32, device=device).requires_grad_(True)


def _auto_canonizers(module) -> list:
    """``canonizers: auto``: zennit's canonizer for a torchvision ResNet or VGG, none for anything else, where
    zennit's composites pass relevance through BatchNorm unchanged (SequentialMergeBatchNorm pairs layers by
    their order in a Sequential, which is not always the order of the data: DenseNet's crash with it)."""
    kinds = {type(m).__module__ + "." + type(m).__name__ for m in module.modules()}
    if kinds & {"torchvision.models.resnet.BasicBlock", "torchvision.models.resnet.Bottleneck"}:
        return ["ResNetCanonizer"]
    if "torchvision.models.vgg.VGG" in kinds:
        return ["VGGCanonizer"]
    return []


def canonizer_names(rule, module) -> list:
    """The zennit canonizers a rule uses, by class name (``auto`` resolved for this module)."""
    names = rule.params.get("canonizers", []) if rule.analyzer.startswith("zennit.") else []
    return _auto_canonizers(module) if names == "auto" else list(names)


def _canonizers(rule, names: list) -> list:
    found = []
    for name in names:
        cls = getattr(library("zennit.canonizers"), name, None) or getattr(library("zennit.torchvision"), name, None)
        if not isinstance(cls, type):
            raise LrpUsageError(
                f"{rule.where('params')}: zennit has no canonizer {name!r} (zennit.canonizers, zennit.torchvision)"
            )
        try:
            found.append(cls())
        except TypeError as exc:
            raise LrpUsageError(
                f"{rule.where('params')}: canonizer {name} needs arguments a rule file cannot give ({exc})"
            ) from None
    return found


def _composite(rule, name: str, canonizers: list, params: dict, x):
    composites, rules = library("zennit.composites"), library("zennit.rules")
    for bound in ("low", "high"):
        if bound in params:  # a number in the rule file: zennit expands it to each layer's input (a tensor of
            params[bound] = float(params[bound])  # the model input's shape would fit the first layer only)
    if name.startswith("rule."):
        rule_class = getattr(rules, ZENNIT_RULES[name[len("rule.") :]][0])
        stabilizer = params.get("stabilizer", 1e-6)
        hook = rule_class(**params)
        layer_map = [
            *composites.layer_map_base(stabilizer),
            (library("zennit.types").Convolution, hook),
            (torch().nn.Linear, hook),
        ]
        return composites.LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    try:
        return getattr(composites, ZENNIT_COMPOSITES[name][0])(canonizers=canonizers, **params)
    except TypeError as exc:
        raise LrpUsageError(
            f"{rule.where('params')}: zennit's {ZENNIT_COMPOSITES[name][0]} rejects them ({exc})"
        ) from None


def _zennit_lrp(rule, name: str, module, device: str, canonizers: list, params: dict):
    def run(batch: np.ndarray, select, keep_layers: bool) -> Run:
        t = torch()
        x = _tensor(batch, device)
        composite = _composite(rule, name, canonizers, dict(params), x)
        tracker = ModuleTracker(module)
        with (
            batch_norm_merge_with_positive_eps(),
            tracker if keep_layers else contextlib.nullcontext(),
            composite.context(module) as modified,
        ):
            out = modified(x).reshape(len(batch), -1)
            outputs = out.detach().double().cpu().numpy()
            neurons = select(outputs)
            rows = t.arange(len(batch), device=out.device)
            index = t.as_tensor(neurons, device=out.device)
            selected = out[rows, index]
            start = t.zeros_like(out)
            # The explained output is the relevance at the top (for target positive_output, its positive part).
            top = selected.detach().clamp(min=0) if rule.target == "positive_output" else selected.detach()
            start[rows, index] = top
            (heat,) = t.autograd.grad(out, x, start)
        heatmaps = heat.detach().cpu().numpy()
        layers, maps = [], {}
        if keep_layers:
            sums = heatmaps.reshape(len(batch), -1).sum(axis=1, dtype=np.float64)
            layers = tracker.layers(len(batch), sums, selected.detach().double().cpu().numpy())
            maps = tracker.maps()
        return Run(heatmaps, layers, outputs, neurons, maps)

    return run


def _zennit_attributor(module, device: str, name: str, canonizers: list, params: dict, reference: float):
    attribution = library("zennit.attribution")
    composite = (
        library("zennit.composites").LayerMapComposite(layer_map=[], canonizers=canonizers) if canonizers else None
    )
    kwargs = dict(params)
    if name == "IntegratedGradients":
        kwargs["baseline_fn"] = lambda x: torch().full_like(x, reference)

    def run(batch: np.ndarray, select, keep_layers: bool) -> Run:
        t = torch()
        x = _tensor(batch, device)
        outputs = forward(module, batch, device)
        neurons = select(outputs)
        with (
            batch_norm_merge_with_positive_eps(),
            getattr(attribution, name)(module, composite=composite, **kwargs) as attributor,
        ):
            out = module(x.detach()).reshape(len(batch), -1)
            one_hot = t.zeros_like(out)
            one_hot[t.arange(len(batch)), t.as_tensor(neurons, device=out.device)] = 1.0
            _, heat = attributor(x, one_hot)
        return Run(heat.detach().cpu().numpy(), [], outputs, neurons)

    return run


def _captum_rule(rules_module, name: str, params: dict):
    if name == "gamma":
        return rules_module.GammaRule(gamma=float(params.get("gamma", 0.25)))
    if name == "alpha1_beta0":
        return rules_module.Alpha1_Beta0_Rule()
    if name == "identity":
        return rules_module.IdentityRule()
    return rules_module.EpsilonRule(epsilon=float(params.get("epsilon", 1e-9)))


def _captum_lrp(rule, module, device: str, params: dict):
    lrp_module = library("captum.attr._core.lrp")
    rules_module = library("captum.attr._utils.lrp_rules")
    leaves = [(n, m) for n, m in module.named_modules() if next(iter(m.children()), None) is None and n]
    plan, passed = [], []
    for name, leaf in leaves:
        kind = type(leaf)
        if kind in lrp_module.SUPPORTED_NON_LINEAR_LAYERS:
            continue
        if kind in lrp_module.SUPPORTED_LAYERS_WITH_RULES:
            chosen = params.get("rules", {}).get(kind.__name__, params.get("rule", "epsilon"))
            plan.append((name, leaf, chosen))
        elif kind.__name__ in VALUE_PRESERVING:
            passed.append(leaf)
        else:
            pytest.skip(
                f"captum's LRP has no rule for module '{name}' ({kind.__name__}) and pytest-lrp cannot attach one "
                f"({rule.analyzer} refuses this model)"
            )

    functional = functional_operation(module)
    if functional:
        pytest.skip(
            f"captum's LRP does not propagate relevance through {functional}: captum needs a module for it "
            f"(its Addition_Module) ({rule.analyzer} refuses this model)"
        )

    def run(batch: np.ndarray, select, keep_layers: bool) -> Run:
        t = torch()
        outputs = forward(module, batch, device)
        neurons = select(outputs)
        attached = []  # (name, rule): captum removes the rules from the layers when it is done
        for name, leaf, chosen in plan:
            leaf.rule = _captum_rule(rules_module, chosen, params)
            attached.append((name, leaf.rule, type(leaf).__name__))
        for leaf in passed:
            leaf.add_module(PLACEHOLDER, t.nn.Dropout())
        try:
            x = _tensor(batch, device)
            heat = lrp_module.LRP(module).attribute(x, target=t.as_tensor(neurons, device=device))
            heatmaps = heat.detach().cpu().numpy()
            layers, maps = [], {}
            if keep_layers:
                sums = heatmaps.reshape(len(batch), -1).sum(axis=1, dtype=np.float64)
                explained = outputs[np.arange(len(batch)), neurons]
                layers = captum_layers(attached, explained, sums)
                maps = captum_maps(attached, explained)
        finally:
            for leaf in passed:
                delattr(leaf, PLACEHOLDER)
            for _, leaf in leaves:
                for attribute in ("rule", "activations"):
                    if attribute in leaf.__dict__:
                        delattr(leaf, attribute)
        return Run(heatmaps, layers, outputs, neurons, maps)

    return run


# Operations that only move values (reshape, select, concatenate, split): relevance passes them unchanged.
MOVING = {
    "flatten",
    "reshape",
    "view",
    "view_as",
    "permute",
    "transpose",
    "squeeze",
    "unsqueeze",
    "contiguous",
    "getitem",
    "getattr",
    "size",
    "dim",
    "cat",
    "concat",
    "stack",
    "chunk",
    "split",
    "dropout",
    "identity",
    "clone",
    "to",
    "float",
    "type_as",
    "expand",
    "expand_as",
}


def functional_operation(module) -> str | None:
    """The first operation outside any module that does more than move values (``out + identity``, a
    squeeze-excitation's ``scale * x``, a ``F.relu`` in a forward), as torch.fx sees it, or None (also where fx
    cannot trace the module: then captum runs, and conservation judges)."""
    try:
        graph = library("torch.fx").symbolic_trace(module).graph
    except Exception:
        return None
    for node in graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        if name.strip("_").removeprefix("i") in MOVING or name.strip("_") in MOVING:
            continue
        where = node.meta.get("nn_module_stack") or {}
        owner = f"module '{list(where)[-1]}'" if where else "the model's forward"
        return f"the functional operation {name.strip('_')} in {owner}"
    return None


def _captum_attribution(name: str, module, device: str, params: dict, reference: float):
    attr = library("captum.attr")
    method = {
        "input_x_gradient": "InputXGradient",
        "integrated_gradients": "IntegratedGradients",
        "deep_lift": "DeepLift",
    }[name]

    def run(batch: np.ndarray, select, keep_layers: bool) -> Run:
        t = torch()
        x = _tensor(batch, device)
        outputs = forward(module, batch, device)
        neurons = select(outputs)
        kwargs = dict(params)
        if name != "input_x_gradient":
            kwargs["baselines"] = reference
        heat = getattr(attr, method)(module).attribute(x, target=t.as_tensor(neurons, device=device), **kwargs)
        return Run(heat.detach().cpu().numpy(), [], outputs, neurons)

    return run
