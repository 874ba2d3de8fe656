"""The tests generated from a rule file: one per (check, model, rule)."""

from __future__ import annotations

import pytest

from .base.errors import LrpBeyondExpectation, LrpCheckFailed, LrpUsageError, shown
from .base.tf_runtime import expect_torch
from .checks.baseline import check_baseline
from .checks.conservation import check_conservation
from .checks.properties import check_batch_invariance, check_determinism, check_finite, check_positive
from .checks.reference import check_reference
from .config.model_spec import PythonModel
from .config.torch_analyzers import is_lxt_analyzer, is_torch_analyzer
from .engine.crashes import crash_line, model_label, shortened
from .engine.workbench import NO_MODEL, workbench_key

# In the order of rulefile.CHECK_NAMES. Each takes the analysis; those in ITEM_CHECKS also the test item.
CHECKS = {
    "conservation": check_conservation,
    "finite": check_finite,
    "positive": check_positive,
    "batch_invariance": check_batch_invariance,
    "determinism": check_determinism,
    "reference": check_reference,
    "baseline": check_baseline,
}
ITEM_CHECKS = ("baseline",)  # where the baseline lives and whether to update it are run settings


class RulesFile(pytest.File):
    def collect(self):
        workbench = self.config.stash[workbench_key]
        try:
            rule_file = workbench.rule_file
            names = workbench.model_names()
        except LrpUsageError as exc:
            raise self.CollectError(str(exc)) from None
        if any(isinstance(path, PythonModel) for path in names) and not all(
            isinstance(path, PythonModel) for path in names
        ):
            expect_torch()  # Keras and PyTorch models in one session: the import order matters (tf_runtime.py)
        for path in names:
            torch_model = isinstance(path, PythonModel)
            if not any(is_torch_analyzer(rule.analyzer) == torch_model for rule in rule_file.rules):
                kind = (
                    "PyTorch models (zennit.* or captum.* analyzers)"
                    if torch_model
                    else "Keras models (innvestigate's analyzers)"
                )
                raise self.CollectError(
                    f"{shown(rule_file.path)}: no rule for {kind}, so {path} would get no test; add one, or write "
                    f"pytest-lrp's suite for it with pytest --lrp-model={path} --lrp-write-rules=PATH and pass --lrp-rules=PATH"
                )
        lxt_rules = workbench.has_lxt_rules()
        for check in CHECKS:
            rules = [rule for rule in rule_file.rules if check in rule.checks]
            if not names:
                for rule in rules:
                    item = LrpItem.from_parent(
                        self, name=f"{check}[{rule.id}]", check=check, model_path=None, model_name=None, rule=rule
                    )
                    item.add_marker(pytest.mark.skip(reason=NO_MODEL))
                    yield item
            for path, model_name in names.items():
                for rule in rules:
                    if is_torch_analyzer(rule.analyzer) != isinstance(path, PythonModel):
                        continue  # a rule of the other framework's (one rule file for Keras and PyTorch models)
                    if lxt_rules and is_lxt_analyzer(rule.analyzer) != workbench.is_transformer(path):
                        continue  # LXT's rules for transformers' models, zennit's and captum's for the others
                    yield LrpItem.from_parent(
                        self,
                        name=f"{check}[{model_name}-{rule.id}]",
                        check=check,
                        model_path=path,
                        model_name=model_name,
                        rule=rule,
                    )


class LrpItem(pytest.Item):
    def __init__(self, *, check, model_path, model_name, rule, **kwargs):
        super().__init__(**kwargs)
        self.check, self.model_path, self.model_name, self.rule = check, model_path, model_name, rule
        self.analysis = None
        self.add_marker(pytest.mark.lrp)
        self.add_marker(f"lrp_{check}")  # -m lrp_positive, -m "lrp and not lrp_baseline"
        # An xfail reason explains a conservation leak; the other properties must hold
        # regardless (innvestigate#273: a leaking rule can also explode).
        if rule.xfail and check == "conservation":
            # raises=: only a failed check counts as the expected failure; a crash stays an error.
            self.add_marker(
                pytest.mark.xfail(reason=rule.xfail.reason, strict=rule.xfail.strict, raises=LrpCheckFailed)
            )

    def setup(self):
        # The analysis runs in setup: a model, input or analyzer that cannot be analyzed
        # makes the test an error (it could not run); a property that does not hold, a failure.
        workbench = self.config.stash[workbench_key]
        label = model_label(self.model_path)
        self.analysis = shortened(self.config, self.rule, label, lambda: workbench.analysis(self.model_path, self.rule))

    def runtest(self):
        if self.check in ITEM_CHECKS:
            workbench = self.config.stash[workbench_key]
            CHECKS[self.check](self.analysis, self, workbench.settings, workbench.rules_path)
        else:
            CHECKS[self.check](self.analysis)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, (LrpCheckFailed, LrpBeyondExpectation, LrpUsageError)):
            return str(excinfo.value)
        crash = crash_line(self.config, self.rule, model_label(self.model_path), excinfo.value)
        return crash or super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, 0, f"{self.name} ({self.rule.analyzer})"
