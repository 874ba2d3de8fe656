"""Fixtures for hand-written tests that use the plugin's machinery."""

from __future__ import annotations

import pytest

from .base.errors import LrpUsageError
from .checks.conservation import check_conservation
from .config.rulefile import rule_from_marker
from .engine.crashes import model_label, shortened
from .engine.workbench import NO_MODEL, workbench_key


def parametrize_models(metafunc: pytest.Metafunc) -> None:
    """A test using ``lrp_model`` runs once per configured model."""
    workbench = metafunc.config.stash[workbench_key]
    try:
        names = workbench.model_names()
    except LrpUsageError as exc:
        raise pytest.Collector.CollectError(str(exc)) from None
    if names:
        metafunc.parametrize("lrp_model", list(names), ids=list(names.values()), indirect=True)
    else:
        metafunc.parametrize(
            "lrp_model", [pytest.param(None, marks=pytest.mark.skip(reason=NO_MODEL))], ids=["no-model"], indirect=True
        )


@pytest.fixture
def lrp_model(request):
    """The model under test (a ``ModelFile``: ``.path``, ``.name``, ``.keras_model``, ``.predict(x)``)."""
    return _usage(lambda: request.config.stash[workbench_key].model(request.param))


@pytest.fixture
def lrp_inputs(request, lrp_model):
    """The inputs for ``lrp_model`` (float32 array) from --lrp-inputs / the rule file, or seeded random ones."""
    return _usage(lambda: request.config.stash[workbench_key].inputs(lrp_model))


@pytest.fixture
def lrp_analysis(request, lrp_model, lrp_inputs):
    """The analysis of ``lrp_inputs`` with the rule of the test's ``lrp_rule`` marker.

    Holds ``heatmaps``, ``outputs``, ``targets``, ``sums``, ``errors``, ``bounds``
    and ``layers``; ``assert_conserved()`` applies the rule's tolerance.
    """
    marker = request.node.get_closest_marker("lrp_rule")
    if marker is None:
        pytest.fail("lrp_analysis needs a rule: mark the test with @pytest.mark.lrp_rule('lrp.z', ...)", pytrace=False)
    workbench = request.config.stash[workbench_key]
    rule = _usage(lambda: rule_from_marker(request.node.nodeid, marker.args, marker.kwargs))
    label = model_label(lrp_model.path)
    return LrpAnalysis(
        _usage(
            lambda: shortened(request.config, rule, label, lambda: workbench.analysis(lrp_model.path, rule, lrp_inputs))
        )
    )


class LrpAnalysis:
    """What ``lrp_analysis`` gives a hand-written test: the analysis' data (checks/record.py: ``heatmaps``,
    ``outputs``, ``targets``, ``sums``, ``errors``, ``bounds``, ``layers``, ...) and ``assert_conserved()``.

    Parameters
    ----------
    analysis : pytest_lrp.checks.record.Analysis
        The finished analysis; every attribute not defined here is read from it.
    """

    def __init__(self, analysis):
        self._analysis = analysis

    def __getattr__(self, name: str):
        return getattr(self._analysis, name)

    def assert_conserved(self) -> None:
        """Fail the test with the worst sample's numbers unless every sample is within the rule's tolerance;
        a leak by the mechanisms the rule declares (``leaks=``) makes it an expected failure, as in a rule file."""
        __tracebackhide__ = True  # a hand-written test's failure shows its own line and the message, as a generated one
        check_conservation(self._analysis)


def _usage(compute):
    try:
        return compute()
    except LrpUsageError as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the except: no "during handling" chain
