"""Reading and validating a rule file (rules.yaml) into plain data.

Everything is checked here, once, at collection time, so that a mistake in the
file is reported as one line naming the file, the rule and the key, before any
model is loaded.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base.errors import LrpUsageError, shown
from ..base.lazy import yaml
from . import yaml_loader
from .analyzer_names import analyzer_names, close_matches
from .analyzer_params import unknown_param_message
from .model_spec import python_model
from .torch_analyzers import LXT_RULES, TORCH_ANALYZERS, WITH_REFERENCE, torch_param_message

TARGETS = ("output", "positive_output", "output_minus_reference")
NEURON_SELECTIONS = ("max_activation",)
TOP_LEVEL_KEYS = ("defaults", "rules")
DEFAULT_KEYS = (
    "models",
    "inputs",
    "samples",
    "seed",
    "input_shape",
    "device",
    "tolerance",
    "neuron_selection",
    "target",
    "max_error",
    "checks",
    "baseline",
    "baseline_tolerance",
    "reference_tolerance",
)
RULE_KEYS = (
    "id",
    "analyzer",
    "params",
    "target",
    "tolerance",
    "xfail",
    "neuron_selection",
    "max_error",
    "checks",
    "baseline",
    "baseline_tolerance",
    "reference_tolerance",
    "leaks",
    "strict",
)
# Each check is a test of its own (id "<check>[<model>-<rule>]"), generated in this order.
CHECK_NAMES = ("conservation", "finite", "positive", "batch_invariance", "determinism", "reference", "baseline")
# How a rule's own formula loses relevance (pytest_lrp.reference computes each; a test
# keeps this list equal to the reference's): `leaks:` may name them.
LEAK_MECHANISMS = ("bias", "stabilizer", "dropped", "unbalanced", "gradient")
# How LXT's rules lose relevance on a transformer (transformer/accounting.py measures each): biases of linear
# layers and LayerNorms, the softmax's Taylor term (AttnLRP), and what position and token-type embeddings (a
# ViT's class token) take beside the input embeddings. An operation LXT left unpatched is never declarable.
LXT_LEAK_MECHANISMS = ("bias", "softmax", "embeddings")
# The analyzers whose leaks have mechanisms: those that propagate relevance by a rule's formula.
LEAK_ANALYZER_FAMILIES = ("lrp", "deep_taylor")
# zennit's and captum's relevance rules (their attributors are gradients, not rules); the reference knows them
TORCH_RULE_ANALYZERS = ("zennit.epsilon", "zennit.rule.", "captum.lrp")


def accounts_leaks(analyzer: str) -> bool:
    """The analyzers whose leaks have mechanisms: relevance propagation by a rule's formula."""
    if analyzer.split(".")[0] in LEAK_ANALYZER_FAMILIES:
        return True
    return analyzer.startswith(TORCH_RULE_ANALYZERS) or analyzer in LXT_RULES


DEFAULT_CHECKS = ("conservation", "finite")
TOLERANCE_KEYS = ("rtol", "atol")
# innvestigate keywords the plugin sets itself; a rule must not fight over them.
RESERVED_PARAMS = {
    "neuron_selection_mode": "use the rule key 'neuron_selection' instead",
    "reverse_keep_tensors": "the plugin keeps per-layer relevance itself",
}


@dataclass(frozen=True)
class Tolerance:
    rtol: float = 1e-5
    atol: float = 1e-6

    def bound(self, target):
        """The largest error allowed for a sample whose target is ``target``."""
        return self.atol + self.rtol * abs(target)

    def __str__(self) -> str:
        return f"rtol={self.rtol:g}, atol={self.atol:g}"


# Float32 noise between machines and batch sizes is well below 1e-4 of a value; a
# changed explanation is not.
BASELINE_TOLERANCE = Tolerance(rtol=1e-4, atol=1e-6)
# innvestigate (float32) vs the numpy reference (float64), relative to the largest |relevance|
# of a sample at a layer (checks/comparison.py), on top of the reference's float32 rounding bound.
REFERENCE_TOLERANCE = Tolerance(rtol=1e-4, atol=1e-6)


@dataclass(frozen=True)
class Xfail:
    reason: str
    strict: bool = True


@dataclass(frozen=True)
class Rule:
    id: str
    analyzer: str
    params: dict = field(default_factory=dict, hash=False, compare=False)
    target: str = "output"
    tolerance: Tolerance = Tolerance()
    xfail: Xfail | None = None
    neuron_selection: str | int = "max_activation"
    max_error: float | None = None
    checks: tuple = DEFAULT_CHECKS
    baseline_tolerance: Tolerance = (
        BASELINE_TOLERANCE  # element-wise, for comparing heatmaps (baseline, batch_invariance)
    )
    reference_tolerance: Tolerance = REFERENCE_TOLERANCE  # innvestigate vs the numpy reference (check 'reference')
    leaks: tuple = ()  # mechanisms whose loss the conservation test accepts (LEAK_MECHANISMS)
    strict: bool = False  # the declared leak must appear: a conserving sample set fails as XPASS(strict)
    source: str = field(default="", compare=False)  # the rule file (or test) it came from, for messages

    def where(self, key: str) -> str:
        return f"{self.source}: rule '{self.id}': key '{key}'"


@dataclass
class RuleFile:
    path: Path
    rules: list
    models: list = field(default_factory=list)
    inputs: Path | None = None
    samples: int | None = None
    seed: int | None = None
    input_shape: tuple | None = None  # for random inputs to a PyTorch module, which declares none
    device: str | None = None  # where PyTorch models run ("cpu", "cuda", "cuda:1")


def load_rule_file(path) -> RuleFile:
    path = Path(path)
    where = _Where(path)
    document = _read_yaml(path, where)
    if document is None:
        raise where.error("the file is empty; expected a mapping with a 'rules' list")
    if not isinstance(document, dict):
        raise where.error(f"expected a mapping with a 'rules' list at the top, got {_kind(document)}")
    _reject_unknown_keys(document, TOP_LEVEL_KEYS, where, "top-level key")
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise where.key("defaults").error(f"expected a mapping, got {_kind(defaults)}")
    _reject_unknown_keys(defaults, DEFAULT_KEYS, where.key("defaults"), "key")
    if "rules" not in document:
        raise where.error("no 'rules' list; add 'rules:' with at least one rule")
    raw_rules = document["rules"]
    if not isinstance(raw_rules, list) or not raw_rules:
        raise where.key("rules").error(f"expected a non-empty list of rules, got {_kind(raw_rules)}")

    base = path.parent
    inherited = _rule_defaults(defaults, where.key("defaults"))
    rules, seen = [], set()
    for index, raw in enumerate(raw_rules, start=1):
        rule = _parse_rule(raw, index, inherited, where)
        if rule.id in seen:
            raise where.rule(rule.id).key("id").error("duplicate rule id; ids must be unique")
        seen.add(rule.id)
        rules.append(rule)

    return RuleFile(
        path=path,
        rules=rules,
        models=[
            python_model(m, base) or base / m
            for m in _list_of_paths(defaults.get("models"), where.key("defaults").key("models"))
        ],
        inputs=base / _path(defaults["inputs"], where.key("defaults").key("inputs"))
        if defaults.get("inputs") is not None
        else None,
        samples=_positive_int(defaults.get("samples"), where.key("defaults").key("samples")),
        seed=_int(defaults.get("seed"), where.key("defaults").key("seed")),
        input_shape=input_shape(defaults.get("input_shape"), where.key("defaults").key("input_shape").error),
        device=_device(defaults.get("device"), where.key("defaults").key("device")),
    )


class _Where:
    """Builds the 'file: rule 'id': key 'k': ...' prefix of an error line."""

    def __init__(self, path, parts=()):
        self.path, self.parts = path, parts

    def rule(self, rule_id):
        return _Where(self.path, (*self.parts, f"rule '{rule_id}'"))

    def key(self, name):
        return _Where(self.path, (*self.parts, f"key '{name}'"))

    def error(self, message) -> LrpUsageError:
        # Keys and values come from the file; a newline in one must not break the one-line promise.
        return LrpUsageError(_one_line(": ".join((shown(self.path), *self.parts, message))))


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _read_yaml(path: Path, where: _Where):
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _raise(where.error("rule file not found"))
    except OSError as exc:
        return _raise(where.error(f"cannot read the rule file ({exc.strerror or exc})"))
    except UnicodeDecodeError:
        return _raise(where.error("the rule file is not UTF-8 text"))
    try:
        return yaml_loader.load(text)
    except yaml_loader.DuplicateKey as exc:
        raise where.error(str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise where.error(f"{line}YAML syntax error: {problem}") from None


def _raise(error):
    raise error


def _rule_defaults(defaults: dict, where: _Where) -> dict:
    inherited = {"tolerance": _tolerance(defaults.get("tolerance"), Tolerance(), where.key("tolerance"))}
    inherited.update(_optional_settings(defaults, where))
    inherited.update(_check_settings(defaults, {}, where))
    return inherited


def _optional_settings(raw: dict, where: _Where) -> dict:
    """The keys a rule may set or inherit from defaults, those present in ``raw``."""
    values = {}
    if "neuron_selection" in raw:
        values["neuron_selection"] = _neuron_selection(raw["neuron_selection"], where.key("neuron_selection"))
    if "target" in raw:
        values["target"] = _target(raw["target"], where.key("target"))
    if raw.get("max_error") is not None:
        values["max_error"] = _non_negative(raw["max_error"], where.key("max_error"))
    return values


def _parse_rule(raw, index: int, inherited: dict, where: _Where) -> Rule:
    if not isinstance(raw, dict):
        raise where.key("rules").error(f"rule #{index} must be a mapping with 'id' and 'analyzer', got {_kind(raw)}")
    rule_id = raw.get("id")
    if not isinstance(rule_id, (str, int)) or isinstance(rule_id, bool) or str(rule_id).strip() == "":
        raise where.key("rules").error(f"rule #{index} needs an 'id' (a non-empty string)")
    rule_id = str(rule_id)
    if any(ch in rule_id for ch in "[]/:\\ \t\n"):
        raise (
            where.rule(rule_id)
            .key("id")
            .error("an id may not contain spaces, brackets, slashes or colons (it is part of the test id)")
        )
    here = where.rule(rule_id)
    _reject_unknown_keys(raw, RULE_KEYS, here, "key")

    analyzer = raw.get("analyzer")
    if not isinstance(analyzer, str) or not analyzer:
        raise here.key("analyzer").error(
            "missing; name an analyzer innvestigate.create_analyzer knows, e.g. 'lrp.epsilon'"
        )
    if analyzer not in analyzer_names() and analyzer not in TORCH_ANALYZERS:
        matches = close_matches(analyzer, TORCH_ANALYZERS)
        hint = f" (close matches: {', '.join(matches)})" if matches else f" (known: {', '.join(analyzer_names())})"
        raise here.key("analyzer").error(f"unknown analyzer '{analyzer}'{hint}")

    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise here.key("params").error(f"expected a mapping of analyzer keyword arguments, got {_kind(params)}")
    for name in params:
        if name in RESERVED_PARAMS:
            raise here.key("params").error(f"'{name}' cannot be set here: {RESERVED_PARAMS[name]}")
    if analyzer in TORCH_ANALYZERS:
        unknown = torch_param_message(analyzer, params)
    else:
        unknown = unknown_param_message(analyzer, params, RESERVED_PARAMS)
    if unknown:
        raise here.key("params").error(unknown)

    values = dict(inherited)
    values["tolerance"] = _tolerance(raw.get("tolerance"), inherited["tolerance"], here.key("tolerance"))
    values.update(_optional_settings(raw, here))
    values.update(_check_settings(raw, inherited, here))
    if (
        values.get("target") == "output_minus_reference"
        and analyzer not in ("integrated_gradients", *WITH_REFERENCE)
        and "reference_inputs" not in params
    ):
        raise here.key("target").error("'output_minus_reference' needs params.reference_inputs")
    leaks = _leaks(raw.get("leaks"), analyzer, here.key("leaks"))
    return Rule(
        id=rule_id,
        analyzer=analyzer,
        params=dict(params),
        xfail=_xfail(raw.get("xfail"), here.key("xfail")),
        leaks=leaks,
        strict=_strict(raw.get("strict"), leaks, here.key("strict")),
        source=shown(where.path),
        **values,
    )


def _check_settings(raw: dict, inherited: dict, where: _Where) -> dict:
    """'checks' (replaces the inherited list), 'baseline' (true/false adds/removes that check) and 'baseline_tolerance'."""
    checks = inherited.get("checks", DEFAULT_CHECKS)
    if raw.get("checks") is not None:
        checks = _checks(raw["checks"], where.key("checks"))
    if raw.get("baseline") is not None:
        if not isinstance(raw["baseline"], bool):
            raise where.key("baseline").error(f"expected true or false, got {raw['baseline']!r}")
        checks = tuple(c for c in checks if c != "baseline") + (("baseline",) if raw["baseline"] else ())
    if not checks:
        raise where.key("checks").error(f"no check left to run; name at least one of {', '.join(CHECK_NAMES)}")
    tolerance = _tolerance(
        raw.get("baseline_tolerance"),
        inherited.get("baseline_tolerance", BASELINE_TOLERANCE),
        where.key("baseline_tolerance"),
    )
    reference = _tolerance(
        raw.get("reference_tolerance"),
        inherited.get("reference_tolerance", REFERENCE_TOLERANCE),
        where.key("reference_tolerance"),
    )
    return {
        "checks": tuple(c for c in CHECK_NAMES if c in checks),
        "baseline_tolerance": tolerance,
        "reference_tolerance": reference,
    }


def _checks(value, where: _Where) -> tuple:
    return _names(value, CHECK_NAMES, "check", where)


def _names(value, known: tuple, what: str, where: _Where) -> tuple:
    """A non-empty list (or one string) of names out of ``known``; a misspelling gets a suggestion."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise where.error(f"expected a non-empty list of {what}s ({', '.join(known)}), got {_kind(value)}")
    for name in value:
        if name not in known:
            match = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean '{match[0]}'?" if match else f"known: {', '.join(known)}"
            raise where.error(f"unknown {what} {name!r} ({hint})")
    return tuple(value)


def _leaks(value, analyzer: str, where: _Where) -> tuple:
    if value is None:
        return ()
    known = LXT_LEAK_MECHANISMS if analyzer in LXT_RULES else LEAK_MECHANISMS
    names = _names(value, known, "mechanism", where)
    if not accounts_leaks(analyzer):
        raise where.error(
            f"analyzer '{analyzer}' has no leak mechanisms (only LRP, Deep Taylor and zennit's, captum's and LXT's LRP rules do); use xfail to expect its conservation to fail"
        )
    return tuple(m for m in known if m in names)


def _strict(value, leaks: tuple, where: _Where) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise where.error(f"expected true or false, got {value!r}")
    if value and not leaks:
        raise where.error("strict: true asks for the declared leak to appear; declare it with leaks: [...]")
    return value


def _reject_unknown_keys(mapping: dict, known, where: _Where, what: str) -> None:
    for key in mapping:
        if key not in known:
            match = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{match[0]}'?)" if match else f" (known: {', '.join(known)})"
            raise where.key(key).error(f"unknown {what}{hint}")


def _tolerance(raw, inherited: Tolerance, where: _Where) -> Tolerance:
    if raw is None:
        return inherited
    if not isinstance(raw, dict):
        raise where.error(f"expected a mapping like {{rtol: 1.0e-5, atol: 1.0e-6}}, got {_kind(raw)}")
    _reject_unknown_keys(raw, TOLERANCE_KEYS, where, "tolerance key")
    values = {name: _non_negative(raw[name], where.key(name)) for name in TOLERANCE_KEYS if name in raw}
    return Tolerance(**{**inherited.__dict__, **values})


def _non_negative(value, where: _Where) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise where.error(f"expected a non-negative number, got {value!r}")
    return float(value)


def _target(value, where: _Where) -> str:
    if value not in TARGETS:
        raise where.error(f"unknown target {value!r} (known: {', '.join(TARGETS)})")
    return value


def _neuron_selection(value, where: _Where):
    if value in NEURON_SELECTIONS:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise where.error(f"expected 'max_activation' or an output index >= 0, got {value!r}")


def _xfail(raw, where: _Where) -> Xfail | None:
    if raw is None or raw is False:
        return None
    if isinstance(raw, str) and raw.strip():
        return Xfail(reason=raw.strip())
    if isinstance(raw, dict):
        _reject_unknown_keys(raw, ("reason", "strict"), where, "key")
        reason, strict = raw.get("reason"), raw.get("strict", True)
        if not isinstance(reason, str) or not reason.strip():
            raise where.key("reason").error("an expected failure needs a reason explaining the leak")
        if not isinstance(strict, bool):
            raise where.key("strict").error(f"expected true or false, got {strict!r}")
        return Xfail(reason=reason.strip(), strict=strict)
    raise where.error("expected a reason string or {reason: ..., strict: true|false}")


def _list_of_paths(value, where: _Where) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise where.error(f"expected a list of model paths, got {_kind(value)}")
    return [_path(v, where) for v in value]


def _path(value, where: _Where) -> str:
    if not isinstance(value, str) or not value:
        raise where.error(f"expected a path, got {value!r}")
    return value


def input_shape(value, error) -> tuple | None:
    """One sample's shape as positive whole numbers (``[3, 64, 64]`` or ``"3,64,64"``); ``error(message)`` makes the
    exception naming where it was written."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.replace("x", ",").split(",") if v.strip()]
    try:
        shape = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else None
    except (TypeError, ValueError):
        shape = None
    if not shape or any(isinstance(v, bool) or v < 1 for v in shape):
        raise error(f"expected one sample's shape as positive whole numbers, e.g. [3, 64, 64], got {value!r}")
    return shape


def _device(value, where: _Where) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not (value == "cpu" or value == "mps" or value.split(":")[0] == "cuda"):
        raise where.error(f"expected 'cpu', 'cuda', 'cuda:N' or 'mps', got {value!r}")
    return value


def _int(value, where: _Where) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(f"expected a whole number, got {value!r}")
    return value


def _positive_int(value, where: _Where) -> int | None:
    number = _int(value, where)
    if number is not None and number < 1:
        raise where.error(f"expected a whole number >= 1, got {value!r}")
    return number


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


MARKER_KEYS = ("id", "target", "tolerance", "neuron_selection", "max_error", "leaks", "strict", "reference_tolerance")


def rule_from_marker(label: str, args: tuple, kwargs: dict) -> Rule:
    """The rule of ``@pytest.mark.lrp_rule(analyzer, **params)``, validated like a rule file entry.

    The keys a rule file has besides ``params`` (id, target, tolerance, ...) are
    taken from the keyword arguments; everything else goes to the analyzer.
    """
    where = _Where(label)
    if len(args) != 1 or not isinstance(args[0], str):
        raise where.error("lrp_rule takes the analyzer name as its one positional argument, e.g. lrp_rule('lrp.z')")
    raw = {key: kwargs[key] for key in MARKER_KEYS if key in kwargs}
    raw.setdefault("id", args[0])
    raw["analyzer"] = args[0]
    raw["params"] = {key: value for key, value in kwargs.items() if key not in MARKER_KEYS}
    if isinstance(raw.get("tolerance"), (int, float)) and not isinstance(raw["tolerance"], bool):
        raw["tolerance"] = {"rtol": raw["tolerance"]}
    return _parse_rule(raw, 1, {"tolerance": Tolerance()}, where)
