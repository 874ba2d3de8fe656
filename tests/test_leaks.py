"""Leak accounting and `leaks:`: the loss split by mechanism, checked against numpy, and the verdicts."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest


def _z_bias_shares(net, x: np.ndarray) -> list:
    """Per Dense layer, output first: -sum_j R_j b_j / z_j, the relevance the z rule leaves with the biases."""
    activations = net.forward(x)
    out = activations[-1]
    rows = np.arange(len(x))
    relevance = np.zeros_like(out)
    relevance[rows, out.argmax(axis=1)] = out[rows, out.argmax(axis=1)]
    shares = []
    for w, b, a in reversed(list(zip(net.kernels, net.biases, activations[:-1]))):
        z = a @ w + b
        shares.append(-(relevance * b / z).sum(axis=1))
        relevance = a * ((relevance / z) @ w.T)
    return shares


def _run(project, pytester, rule: str, model, *args):
    project.rules(f"defaults: {{inputs: {project.inputs}}}\nrules:\n  - {rule}\n")
    return pytester.runpytest(
        f"--lrp-model={model.path}",
        "rules.yaml",
        "-k",
        "conservation",
        "--lrp-report=report.json",
        "--junitxml=junit.xml",
        *args,
    )


def _record(pytester) -> dict:
    return json.loads((pytester.path / "report.json").read_text())["results"][0]


def test_a_declared_leak_is_an_expected_failure_and_its_split_is_the_numpy_one(lrp_project, pytester):
    result = _run(lrp_project, pytester, "{id: z, analyzer: lrp.z, leaks: [bias]}", lrp_project.biased, "-v")
    result.assert_outcomes(xfailed=1)
    result.stdout.fnmatch_lines(
        [
            "biased: 1 rule, 1 test: 1 xfailed*",
            "z * conservation * xfailed * lrp.z * bias *% (declared: bias; explained)*",
        ]
    )
    record = _record(pytester)
    leaks = record["leaks"]
    assert leaks["verdict"] == "explained" and leaks["declared"] == ["bias"]
    x = np.load(lrp_project.inputs)["x"]
    worst = record["worst_sample"]
    expected = [share[worst] for share in _z_bias_shares(lrp_project.biased, x)]
    dense = [layer for layer in leaks["layers"] if layer["class"] == "Dense"]
    assert len(dense) == 3
    np.testing.assert_allclose([layer["bias"] for layer in dense], expected, rtol=1e-4)
    # innvestigate's change at each layer is the bias share, to float32 rounding
    np.testing.assert_allclose([layer["change"] for layer in dense], expected, rtol=1e-3, atol=1e-6)
    assert all(abs(layer["unexplained"]) < 1e-5 for layer in dense)
    assert all(layer["stabilizer"] == layer["dropped"] == layer["unbalanced"] == 0 for layer in dense)
    # the total is the conservation error of that sample: sum(R) - f(x)
    np.testing.assert_allclose(leaks["total"]["bias"], sum(expected), rtol=1e-4)
    np.testing.assert_allclose(
        leaks["total"]["bias"] + leaks["total"]["unexplained"],
        record["sums"][worst] - record["targets"][worst],
        rtol=1e-9,
    )
    properties = {
        p.get("name"): p.get("value") for p in ElementTree.parse(pytester.path / "junit.xml").iter("property")
    }
    np.testing.assert_allclose(float(properties["lrp_leak_bias"]), sum(expected), rtol=1e-4)
    assert properties["lrp_leak_verdict"] == "explained"


def test_an_undeclared_mechanism_fails_with_its_numbers(lrp_project, pytester):
    result = _run(lrp_project, pytester, "{id: z, analyzer: lrp.z, leaks: [stabilizer]}", lrp_project.biased)
    result.assert_outcomes(failed=1)
    x = np.load(lrp_project.inputs)["x"]
    worst = _record(pytester)["worst_sample"]
    bias = sum(share[worst] for share in _z_bias_shares(lrp_project.biased, x))
    result.stdout.fnmatch_lines(
        [
            "relevance not conserved: * samples outside the tolerance (lrp.z on biased)",
            "worst sample *",
            f"leaks: [[]stabilizer[]] declared; * samples leak through something else; sample {worst}: beyond the tolerance: bias {bias:+.3g} (tolerance *",
            f"leak by mechanism (numpy reference), sample {worst}: bias {bias:+.3g}*",
            "leak per layer, sample *",
        ]
    )
    assert _record(pytester)["leaks"]["verdict"] == "not explained"


def test_a_rule_that_conserves_passes_whatever_it_declares(lrp_project, pytester):
    result = _run(lrp_project, pytester, "{id: z, analyzer: lrp.z, leaks: [bias]}", lrp_project.nobias)
    result.assert_outcomes(passed=1)
    leaks = _record(pytester)["leaks"]
    assert leaks["verdict"] == "conserved"
    assert all(abs(value) < 1e-6 for value in leaks["max_abs_total"].values())


def test_xfail_keeps_its_meaning_and_its_reason_gets_the_split(lrp_project, pytester):
    result = _run(
        lrp_project, pytester, "{id: z, analyzer: lrp.z, xfail: biases absorb relevance}", lrp_project.biased, "-rx"
    )
    result.assert_outcomes(xfailed=1)
    result.stdout.fnmatch_lines(
        [
            "XFAIL rules.yaml::conservation[[]biased-z[]] - biases absorb relevance; largest change at layer *; "
            "leak by mechanism (numpy reference): bias *%*"
        ]
    )


def test_a_ceiling_still_applies_to_a_declared_leak(lrp_project, pytester):
    result = _run(
        lrp_project, pytester, "{id: z, analyzer: lrp.z, leaks: [bias], max_error: 1.0e-4}", lrp_project.biased
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["relevance error beyond the rule's ceiling max_error=0.0001 *"])


@pytest.mark.parametrize(
    "leaks, line",
    [
        ("[biass]", "rules.yaml: rule 'r': key 'leaks': unknown mechanism 'biass' (did you mean 'bias'?)"),
        (
            "[]",
            "rules.yaml: rule 'r': key 'leaks': expected a non-empty list of mechanisms (bias, stabilizer, dropped, unbalanced, gradient), got a list",
        ),
        ("{bias: 1}", "rules.yaml: rule 'r': key 'leaks': expected a non-empty list of mechanisms (*), got a mapping"),
    ],
    ids=["misspelled", "empty", "mapping"],
)
def test_bad_leaks_give_one_line(pytester, leaks, line):
    (pytester.path / "rules.yaml").write_text(f"rules:\n  - {{id: r, analyzer: lrp.z, leaks: {leaks}}}\n")
    result = pytester.runpytest("rules.yaml", "--lrp-model=whatever.h5")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([line])
    assert "Traceback" not in result.stdout.str()


def test_leaks_on_an_analyzer_without_mechanisms_is_refused(pytester):
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: ig, analyzer: integrated_gradients, leaks: [bias]}\n"
        "  - {id: z, analyzer: lrp.z, reference_tolerance: {rtol: -1}}\n"
    )
    result = pytester.runpytest("rules.yaml", "--lrp-model=whatever.h5")
    result.stdout.fnmatch_lines(
        ["rules.yaml: rule 'ig': key 'leaks': analyzer 'integrated_gradients' has no leak mechanisms *; use xfail *"]
    )
    (pytester.path / "rules.yaml").write_text("rules:\n  - {id: z, analyzer: lrp.z, reference_tolerance: {rtol: -1}}\n")
    result = pytester.runpytest("rules.yaml", "--lrp-model=whatever.h5")
    result.stdout.fnmatch_lines(
        ["rules.yaml: rule 'z': key 'reference_tolerance': key 'rtol': expected a non-negative number, got -1"]
    )


def test_the_mechanisms_a_rule_may_declare_are_the_references():
    from pytest_lrp.config.rulefile import LEAK_MECHANISMS
    from pytest_lrp.reference import MECHANISMS

    assert LEAK_MECHANISMS == tuple(MECHANISMS)
