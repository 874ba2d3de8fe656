"""The `reference` check: the implementation's relevance equals the numpy reference's, layer by layer.

A bug that sends relevance to the wrong place (a transposed kernel, a wrong alpha, the
wrong rule on one layer) can conserve perfectly; comparing with an independent
implementation of the rule's formula (pytest_lrp.reference) does not let it through.
The comparison itself is data (checks/comparison.py), computed during the analysis.
"""

from __future__ import annotations

import pytest

from ..base.errors import LrpCheckFailed
from ..config.torch_analyzers import implementation_of
from .record import Analysis


def check_reference(analysis: Analysis) -> None:
    comparison = analysis.reference
    label = f"{analysis.rule.analyzer} on {analysis.model.name}"
    if comparison is None:
        pytest.skip(f"no numpy reference for {analysis.rule.analyzer} ({label})")
    if comparison.skipped:
        pytest.skip(comparison.skipped)
    if comparison.problem:
        raise LrpCheckFailed(f"{comparison.problem} ({label})")
    if comparison.bug_fixed:
        raise LrpCheckFailed(f"{comparison.bug_fixed} ({label})")
    divergence = comparison.first_divergence
    if divergence is None:
        if comparison.known_bug:
            pytest.xfail(comparison.known_bug)
        return
    raise LrpCheckFailed(
        (f"beyond {comparison.known_bug}:\n" if comparison.known_bug else "")
        + f"{implementation_of(analysis.rule.analyzer)} differs from the numpy reference ({label}; reference_tolerance {comparison.tolerance}, "
        f"relative to the largest |relevance| of each sample at each layer)\n"
        f"first divergence from the output: {divergence.where}\n" + divergence.describe()
    )
