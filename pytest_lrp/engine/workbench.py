"""Run-wide state: the rule file, loaded models, inputs and finished analyses.

Everything expensive is computed once per pytest process and shared by the
generated tests and the fixtures of hand-written tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from ..base.errors import LrpUsageError, shown
from ..base.lazy import np
from ..checks.reruns import reruns_needed
from ..config.model_spec import PythonModel
from ..config.options import Settings
from ..config.packaged import PACKAGED_RULES, PACKAGED_TORCH_RULES
from ..config.rulefile import Rule, RuleFile, load_rule_file

NO_MODEL = "no model to explain: pass --lrp-model=PATH, set lrp_model in the ini file, or list defaults.models in the rule file"

workbench_key = pytest.StashKey["Workbench"]()
MODEL_HINT = "fix or replace the file named by --lrp-model, the ini key lrp_model or the rule file's defaults.models; no LRP test ran"
INPUTS_HINT = (
    "give inputs of the model's input shape with --lrp-inputs, the ini key lrp_inputs or the rule file's "
    "defaults.inputs (or none: seeded random inputs); no LRP test ran"
)


class Workbench:
    def __init__(self, config: pytest.Config):
        self.settings = Settings(config)
        self.rules_path = self.settings.rules_path
        self._rule_file: RuleFile | None = None
        self._models: dict = {}
        self._inputs: dict = {}
        self._references: dict = {}
        self._analyses: dict = {}

    @property
    def rule_file(self) -> RuleFile | None:
        """The parsed rule file, or None when the default one does not exist."""
        if self._rule_file is None and (self.rules_path.exists() or self.settings.rules_configured):
            self._rule_file = load_rule_file(self.rules_path)
        return self._rule_file

    @property
    def packaged_suite(self) -> bool:
        return self.rules_path in (PACKAGED_RULES, PACKAGED_TORCH_RULES)

    def use_packaged_suite(self, items: list) -> bool:
        """A model to explain, no rule file configured or present, and no LRP test of the user's own
        among ``items``: the run is the default suite shipped in the package (plugin.py collects it)."""
        wanted = self.settings.models_given and not self.settings.rules_configured and not self.rules_path.exists()
        if wanted and not items:
            torch_only = self.frameworks() == {"torch"}  # PyTorch models get the suite of zennit's and captum's rules
            self.rules_path, self._rule_file = (PACKAGED_TORCH_RULES if torch_only else PACKAGED_RULES), None
        return self.packaged_suite

    def require_configured_rule_file(self) -> None:
        """A rule file named by --lrp-rules or lrp_rules must exist: otherwise no LRP test would run, in silence."""
        if self.settings.rules_configured and not self.rules_path.exists():
            # A usage error (exit 4), as pytest's own for a test path that does not exist.
            raise pytest.UsageError(
                f"{shown(self.rules_path)}: rule file not found (named by --lrp-rules or the ini key lrp_rules)"
            )

    def check_runnable(self, model_paths) -> None:
        """Before the first test: innvestigate can run here, and each model loads and its inputs fit it.

        Raises LrpUsageError with one line (an argument) per problem, saying whose problem it is and what to do: otherwise every generated
        test of the model (106 for the packaged suite) would error with the same line. The model and inputs stay
        cached for the tests."""
        paths = list(dict.fromkeys(p if isinstance(p, PythonModel) else Path(p) for p in model_paths))
        if any(not isinstance(p, PythonModel) for p in paths):
            _environment_runs_innvestigate()
        problems = []  # every model's own line (several broken models: all named in one run)
        if any(isinstance(p, PythonModel) for p in paths):
            problems += self._missing_torch_libraries()
            if problems:
                raise LrpUsageError(*problems)
        for path in paths:
            try:
                model = self.model(path)
            except LrpUsageError as exc:
                problems.append(f"{exc} (the model: {MODEL_HINT})")
                continue
            if hasattr(model, "load_inputs") and importlib.util.find_spec("lxt") is None:
                problems.append(
                    f"{path}: a transformers model, explained with LXT, which this Python environment does not have; "
                    "pip install 'pytest-lrp[transformers]'; no LRP test ran"
                )
                continue
            try:
                x = self.inputs(model)
            except LrpUsageError as exc:
                problems.append(f"{exc} (the inputs: {INPUTS_HINT})")
                continue
            except Exception as exc:  # a PyTorch module refusing the inputs' shape, raised inside torch
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
                problems.append(
                    f"{path}: the inputs do not run through the model ({type(exc).__name__}: {first}) "
                    f"(the inputs: {INPUTS_HINT})"
                )
                continue
            # Now, while every model is fresh: building a model in a graph (each analysis does) invalidates the
            # eagerly loaded ones ("Your Layer or Model is in an invalid state"), so nothing may predict with them later.
            if not isinstance(path, PythonModel):
                self._reference_outputs(model, x)
        if problems:
            raise LrpUsageError(*problems)

    def _missing_torch_libraries(self) -> list:
        """One line per library the rule file's PyTorch rules need that this environment lacks (not imported)."""
        import importlib.util

        from ..config.torch_analyzers import is_torch_analyzer

        rules = self.rule_file.rules if self.rule_file is not None else []
        # LXT's rules need lxt only for a transformers model (check_runnable, once the models are loaded).
        families = {r.analyzer.split(".")[0] for r in rules if is_torch_analyzer(r.analyzer)} - {"lxt"}
        needed = ["torch", *sorted(families)]
        return [
            f"PyTorch models need {name}, which this Python environment does not have; "
            "pip install 'pytest-lrp[torch]' (torch, zennit and captum); no LRP test ran"
            for name in needed
            if importlib.util.find_spec(name) is None
        ]

    def model_paths(self) -> list:
        return self.settings.models(self.rule_file)

    def model_names(self) -> dict:
        """Short, unique names for test ids: the file stem, or folder.stem where stems collide."""
        paths = self.model_paths()
        stems = [p.stem for p in paths]
        return {p: (p.stem if stems.count(p.stem) == 1 else f"{p.parent.name}.{p.stem}") for p in paths}

    def frameworks(self) -> set:
        """ "keras" and/or "torch": which backends the configured models need (empty when none is configured)."""
        try:
            return {"torch" if isinstance(p, PythonModel) else "keras" for p in self.model_paths()}
        except LrpUsageError:
            return set()

    def model(self, path):
        """The loaded model: a Keras file (models/modelfile.py) or a PyTorch module named by code (pytorch/)."""
        path = path if isinstance(path, PythonModel) else Path(path)

        def load():
            name = self.model_names().get(path, path.stem)
            if isinstance(path, PythonModel):
                from ..pytorch.loading import load_python_model
                from ..transformer.runtime import is_transformer, prefer_torch

                prefer_torch()  # the model's code may import transformers

                rule_file = self.rule_file
                device, shape = self.settings.device(rule_file), self.settings.input_shape(rule_file)
                found = load_python_model(path, name, device, shape)
                if is_transformer(found.module):  # a transformers model: explained with LXT (transformer/)
                    from ..transformer.loading import as_transformer

                    return as_transformer(found)
                return found
            from ..models.modelfile import load_model_file

            return load_model_file(path, name, trusted=self.settings.flag("lrp_trust_model"))

        # Every test of a broken model reports the same line; the file is read once.
        return _remembered(self._models, path, load, LrpUsageError)

    def is_transformer(self, path) -> bool:
        """A transformers model (LXT's rules explain it), known by loading it; False where it does not load
        (check_runnable names the problem before the first test)."""
        if not isinstance(path, PythonModel):
            return False
        try:
            model = self.model(path)
        except LrpUsageError:
            return False
        return hasattr(model, "load_inputs")

    def has_lxt_rules(self) -> bool:
        from ..config.torch_analyzers import is_lxt_analyzer

        rule_file = self.rule_file
        return rule_file is not None and any(is_lxt_analyzer(r.analyzer) for r in rule_file.rules)

    def keras3_header_lines(self) -> list:
        """Which model files Keras 3 wrote, and whether their translation is checked (models/fidelity.py)."""
        from ..models.fidelity import header_lines

        try:
            files = [p for p in self.model_paths() if not isinstance(p, PythonModel)]
            return header_lines(files, self.settings.inputs(self.rule_file))
        except LrpUsageError:
            return []  # a broken rule file is reported at collection, in one line

    def inputs(self, model) -> np.ndarray:
        from ..models.fidelity import check_outputs
        from ..models.inputs import load_inputs

        def load():
            rule_file = self.rule_file
            path = self.settings.inputs(rule_file)
            # A PyTorch module declares no input shape: inputs from a file give it; random ones need it given.
            if hasattr(model, "load_inputs"):  # a transformers model: token ids and masks, or pixel values
                x = model.load_inputs(path, self.settings.samples(rule_file), self.settings.seed(rule_file))
                check_outputs(model, x, path)
                return x
            declared = isinstance(model.path, PythonModel) and model.sample_shape is None and path is not None
            shape = None if declared else model.input_shape
            x = load_inputs(path, shape, self.settings.samples(rule_file), self.settings.seed(rule_file))
            # Outputs recorded beside the inputs (y) that the model does not reproduce: every test of it errors.
            check_outputs(model, x, path)
            return x

        return _remembered(self._inputs, model.path, load, LrpUsageError)

    def analysis(self, model_path, rule: Rule, x: np.ndarray | None = None):
        model = self.model(model_path)
        x = self.inputs(model) if x is None else np.asarray(x, dtype=np.float32)
        key = (model.path, _rule_key(rule), _digest(x))
        if hasattr(model, "load_inputs"):
            from ..transformer.analysis import analyze as analyze_transformer

            def compute():
                return analyze_transformer(model, rule, x)
        elif isinstance(model.path, PythonModel):
            from ..pytorch.analysis import analyze as analyze_torch

            def compute():
                return analyze_torch(model, rule, x)
        else:
            from .analysis import analyze

            def compute():
                return analyze(model, rule, x, self._reference_outputs(model, x))

        # The other checks of a rule that crashed report the same crash without running
        # (and perhaps running out of memory) again.
        found = _remembered(self._analyses, key, compute)
        # The key leaves out what does not change the heatmaps (id, tolerance, xfail), so a
        # cached analysis may come from another rule; it must be judged by the one asking.
        return found if found.rule == rule else dataclasses.replace(found, rule=rule)

    def _reference_outputs(self, model, x: np.ndarray) -> np.ndarray:
        key = (model.path, _digest(x))
        if key not in self._references:
            self._references[key] = model.predict(x)
        return self._references[key]


class CannotRunHere(LrpUsageError):
    """This process cannot run innvestigate: a property of the process (pytest-xdist workers may differ), not of a file."""


def _environment_runs_innvestigate() -> None:
    """TensorFlow and innvestigate import here (a CannotRunHere naming the environment's problem otherwise)."""
    from ..base.tf_runtime import innvestigate

    try:
        innvestigate()
    except LrpUsageError as exc:  # tf.keras is Keras 3 (tf_runtime.keras_3_problem): its own line says what to do
        raise CannotRunHere(*exc.args) from None
    except Exception as exc:  # ImportError, or a broken install raising anything while importing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
        raise CannotRunHere(
            f"this Python environment cannot run innvestigate ({type(exc).__name__}: {first}); pytest-lrp needs "
            "innvestigate 2.1.2 with TensorFlow's Keras 2: install it in this environment (pip install innvestigate==2.1.2), "
            "or deselect the LRP tests (-m 'not lrp'); no LRP test ran"
        ) from None


def _remembered(cache: dict, key, compute, errors=Exception):
    """``cache[key]``, computed on first use; an error of ``errors`` is remembered and raised again."""
    if key not in cache:
        try:
            cache[key] = compute()
        except errors as exc:
            cache[key] = exc
            raise
    found = cache[key]
    if isinstance(found, Exception):
        raise found.with_traceback(None)
    return found


def _rule_key(rule: Rule) -> tuple:
    params = json.dumps(rule.params, sort_keys=True, default=repr)
    # The reference check compares inside the analysis (no per-layer maps are kept), with this rule's tolerance.
    reference = rule.reference_tolerance if "reference" in rule.checks else None
    return (rule.analyzer, params, rule.target, rule.neuron_selection, reruns_needed(rule), reference)


def _digest(x: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(x).tobytes() + str(x.shape).encode()).hexdigest()
