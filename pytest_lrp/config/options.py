"""Command-line options, their ini keys, and how the effective settings are resolved.

Precedence: command line, then ini file, then the rule file's ``defaults``.
Relative paths are taken relative to where they were written: the invocation
directory for the command line, the ini file's folder for the ini, the rule
file's folder for the rule file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from ..base.errors import LrpUsageError
from .model_spec import PythonModel, python_model

DEFAULT_RULES = "rules.yaml"
# The ini value types pytest.Parser.addini knows
IniType = Literal["string", "paths", "pathlist", "args", "linelist", "bool", "int", "float"]


@dataclass(frozen=True)
class Option:
    flag: str
    ini: str
    help: str
    ini_type: IniType | None = "string"  # None: command line only
    action: str = "store"


OPTIONS = (
    Option(
        "--lrp-model",
        "lrp_model",
        "model to explain: a Keras .h5/.hdf5, .keras or SavedModel folder, or a PyTorch module as FILE.py:NAME or MODULE:NAME (repeatable).",
        "args",
        "append",
    ),
    Option("--lrp-rules", "lrp_rules", f"rule file (default: {DEFAULT_RULES} in the rootdir)."),
    Option("--lrp-inputs", "lrp_inputs", "inputs: .npy, or .npz (the array named 'x', or its only array)."),
    Option("--lrp-samples", "lrp_samples", "use the first N inputs."),
    Option(
        "--lrp-input-shape",
        "lrp_input_shape",
        "one sample's shape for random inputs to a PyTorch model, e.g. 3,64,64 (a module declares none).",
    ),
    Option("--lrp-device", "lrp_device", "where PyTorch models run: cpu (default), cuda, cuda:N."),
    Option("--lrp-seed", "lrp_seed", "seed for random inputs in the model's input shape when no inputs are given."),
    Option(
        "--lrp-baselines",
        "lrp_baselines",
        "folder of the golden heatmaps (default: lrp_baselines next to the rule file).",
    ),
    # Command line only (no ini key): a baseline is never written unless asked for in this very run.
    Option(
        "--lrp-update-baselines",
        "lrp_update_baselines",
        "write missing or differing baselines from the current heatmaps.",
        None,
        "store_true",
    ),
    Option(
        "--lrp-trust-model",
        "lrp_trust_model",
        "load model files that run code when loaded (Lambda or custom layers, SavedModel folders); only for files you trust.",
        "bool",
        "store_true",
    ),
    Option("--lrp-report", "lrp_report", "write the results of the LRP tests as JSON to PATH."),
    Option(
        "--lrp-heatmaps",
        "lrp_heatmaps",
        "write a PNG of inputs and heatmaps to DIR for every failing or xfailing LRP test.",
    ),
    Option(
        "--lrp-heatmaps-all", "lrp_heatmaps_all", "with --lrp-heatmaps: a PNG for every LRP test.", "bool", "store_true"
    ),
    Option(
        "--lrp-html",
        "lrp_html",
        "write one self-contained HTML page of the LRP results (table, heatmaps, relevance per layer) to PATH.",
    ),
    # Command line only: writes the packaged default suite and exits (config/packaged.py).
    Option(
        "--lrp-write-rules",
        "lrp_write_rules",
        "write pytest-lrp's default rule suite to PATH, an editable copy, and exit.",
        None,
    ),
    # Command line only: a calibration is asked for once, never by an ini key that every run would read.
    Option(
        "--lrp-calibrate",
        "lrp_calibrate",
        "run the suite, measure each rule on this model and these inputs, and write a rule file "
        "to PATH (never overwritten) that passes on them: declared leaks, ceilings with a 2x margin, the checks that held "
        "and golden heatmaps beside it; then run pytest --lrp-rules=PATH.",
        None,
    ),
    Option(
        "--lrp-no-summary",
        "lrp_no_summary",
        "do not print the table of LRP results at the end of the run.",
        "bool",
        "store_true",
    ),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("lrp", "layer-wise relevance propagation (pytest-lrp)")
    for option in OPTIONS:
        group.addoption(option.flag, action=option.action, dest=option.ini, default=None, help=option.help)
        if option.ini_type is None:
            continue
        default = {"args": [], "bool": False}.get(option.ini_type)
        parser.addini(option.ini, option.help, type=option.ini_type, default=default)


@dataclass(frozen=True)
class Setting:
    """One resolved value and where it came from (for error messages)."""

    value: object
    source: str


class Settings:
    """Values from the command line and ini file; the rule file fills in the rest."""

    def __init__(self, config: pytest.Config):
        self._config = config
        self.invocation_dir = Path(config.invocation_params.dir)
        self.ini_dir = Path(config.inipath).parent if config.inipath else Path(config.rootpath)

    def _raw(self, option: Option):
        cli = getattr(self._config.option, option.ini, None)
        if cli not in (None, []):
            return cli, option.flag, self.invocation_dir
        ini = self._config.getini(option.ini) if option.ini_type is not None else None
        if ini not in (None, [], "", False):
            return ini, f"ini key {option.ini}", self.ini_dir
        return None, None, None

    def _option(self, name: str) -> Option:
        return next(o for o in OPTIONS if o.ini == name)

    def flag(self, name: str) -> bool:
        """A true/false option (action store_true, ini type bool), by its ini name."""
        value, _, _ = self._raw(self._option(name))
        return bool(value)

    def path(self, name: str) -> Path | None:
        """A path option by its ini name, resolved against where it was written; None when unset."""
        value, _, base = self._raw(self._option(name))
        return None if value is None else (base / value).resolve()

    @property
    def rules_path(self) -> Path:
        value, _, base = self._raw(self._option("lrp_rules"))
        if value is None:
            return Path(self._config.rootpath) / DEFAULT_RULES
        return (base / value).resolve()

    def models(self, rule_file=None) -> list:
        value, _, base = self._raw(self._option("lrp_model"))
        if value is not None:
            return [python_model(v, base) or _as_written(base / v) for v in value]
        return [
            m if isinstance(m, PythonModel) else _as_written(Path(m)) for m in (rule_file.models if rule_file else [])
        ]

    @property
    def rules_configured(self) -> bool:
        return self._raw(self._option("lrp_rules"))[0] is not None

    @property
    def models_given(self) -> bool:
        return self._raw(self._option("lrp_model"))[0] is not None

    def inputs(self, rule_file=None) -> Path | None:
        value, _, base = self._raw(self._option("lrp_inputs"))
        if value is not None:
            return (base / value).resolve()
        return Path(rule_file.inputs).resolve() if rule_file and rule_file.inputs else None

    def input_shape(self, rule_file=None) -> tuple | None:
        value, source, _ = self._raw(self._option("lrp_input_shape"))
        if value is None:
            return rule_file.input_shape if rule_file else None
        from .rulefile import input_shape

        return input_shape(value, lambda message: LrpUsageError(f"{source}: {message}"))

    def device(self, rule_file=None) -> str:
        value, source, _ = self._raw(self._option("lrp_device"))
        if value is None:
            return (rule_file.device if rule_file else None) or "cpu"
        if not (value in ("cpu", "mps") or str(value).split(":")[0] == "cuda"):
            raise LrpUsageError(f"{source}: expected cpu, cuda, cuda:N or mps, got {value!r}")
        return str(value)

    def samples(self, rule_file=None) -> int | None:
        return self._number("lrp_samples", rule_file.samples if rule_file else None, minimum=1)

    def seed(self, rule_file=None) -> int:
        seed = self._number("lrp_seed", rule_file.seed if rule_file else None, minimum=0)
        return 0 if seed is None else seed

    def _number(self, name: str, fallback, minimum: int):
        value, source, _ = self._raw(self._option(name))
        if value is None:
            return fallback
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise LrpUsageError(f"{source}: expected a whole number, got {value!r}") from None
        if number < minimum:
            raise LrpUsageError(f"{source}: expected a whole number >= {minimum}, got {number}")
        return number


def _as_written(path: Path) -> Path:
    """Absolute, without following symbolic links: DVC and git-annex keep models as links to
    files named by their hash, and test ids and reports must show the name the user wrote."""
    return Path(os.path.abspath(path))
