"""The conservation tests a rule file generates, checked against numpy."""

from __future__ import annotations

import re

import numpy as np

WORST = re.compile(
    r"worst sample (\d+): sum\(R\) = (\S+), target f\(x\)\[(\d+)\], softmax stripped = (\S+), "
    r"error = (\S+) \(.*\), tolerance = (\S+) \(atol (\S+) \+ rtol (\S+) \* \|target\|\)(?:; float32 rounding of its terms: (\S+))?"
)


def test_z_rule_conserves_on_a_bias_free_network(lrp_project, pytester):
    lrp_project.rules(f"""
defaults:
  inputs: {lrp_project.inputs}
  tolerance: {{rtol: 1.0e-5, atol: 1.0e-6}}
rules:
  - id: z
    analyzer: lrp.z
  - id: epsilon-no-bias
    analyzer: lrp.epsilon
    params: {{epsilon: 1.0e-9, bias: false}}
""")
    result = pytester.runpytest(f"--lrp-model={lrp_project.nobias.path}", "rules.yaml", "-v", "-k", "conservation")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*rules.yaml::conservation[[]nobias-z[]] PASSED*"])


def test_leaking_rule_fails_with_the_numbers_numpy_computes(lrp_project, pytester):
    lrp_project.rules(f"""
defaults:
  inputs: {lrp_project.inputs}
rules:
  - id: z
    analyzer: lrp.z
    tolerance: {{rtol: 1.0e-6, atol: 0}}
""")
    result = pytester.runpytest(f"--lrp-model={lrp_project.biased.path}", "rules.yaml", "-k", "conservation")
    result.assert_outcomes(failed=1)
    x = np.load(lrp_project.inputs)["x"]
    net = lrp_project.biased
    outputs = net.outputs(x)
    targets = outputs.max(axis=1)
    errors = np.abs(net.lrp_z(x).sum(axis=1) - targets)
    bounds = 1e-6 * np.abs(targets)
    failing = int(np.sum(errors > bounds))
    assert failing > 0, "the biased test network must leak under the z rule"
    output = result.stdout.str()
    assert f"relevance not conserved: {failing} of {len(x)} samples outside the tolerance (lrp.z on biased)" in output
    sample, total, neuron, target, error, tolerance, atol, rtol, rounding = WORST.search(output).groups()
    worst = int(np.argmax(errors / bounds))
    assert int(sample) == worst
    assert int(neuron) == int(outputs[worst].argmax())
    np.testing.assert_allclose(float(target), targets[worst], rtol=1e-5)
    np.testing.assert_allclose(float(total), net.lrp_z(x)[worst].sum(), rtol=1e-4)
    np.testing.assert_allclose(float(error), errors[worst], rtol=5e-3)
    np.testing.assert_allclose(float(tolerance), bounds[worst], rtol=5e-3)
    # the reference's float32 rounding bound, shown beside it: tiny on this well-conditioned net
    assert 0 < float(rounding) < 1e-3 * abs(targets[worst])
    assert (float(atol), float(rtol)) == (0.0, 1e-6)
    assert "Traceback" not in output and "pytest_lrp/" not in output


def test_analysis_fixture_errors_match_numpy(lrp_project, pytester):
    expected = lrp_project.biased
    pytester.makepyfile(
        test_handwritten="""
        import numpy as np
        import pytest

        @pytest.mark.lrp_rule("lrp.z")
        def test_errors(lrp_model, lrp_inputs, lrp_analysis):
            np.save("heatmaps.npy", lrp_analysis.heatmaps)
            np.save("errors.npy", lrp_analysis.errors)
            np.save("inputs.npy", lrp_inputs)
            assert lrp_model.name == "biased"
    """
    )
    result = pytester.runpytest(
        f"--lrp-model={expected.path}", f"--lrp-inputs={lrp_project.inputs}", "--strict-markers"
    )
    result.assert_outcomes(passed=1)
    x = np.load(pytester.path / "inputs.npy")
    heatmaps = np.load(pytester.path / "heatmaps.npy")
    np.testing.assert_allclose(heatmaps, expected.lrp_z(x), rtol=1e-4, atol=1e-6)
    targets = expected.outputs(x).max(axis=1)
    np.testing.assert_allclose(
        np.load(pytester.path / "errors.npy"), np.abs(heatmaps.sum(axis=1) - targets), rtol=1e-4, atol=1e-7
    )


def test_assert_conserved_applies_the_marker_tolerance(lrp_project, pytester):
    pytester.makepyfile(
        test_handwritten="""
        import pytest

        @pytest.mark.lrp_rule("lrp.z", tolerance={"rtol": 1e-5, "atol": 1e-6})
        def test_conserved(lrp_analysis):
            lrp_analysis.assert_conserved()
    """
    )
    passed = pytester.runpytest(f"--lrp-model={lrp_project.nobias.path}", "--strict-markers")
    passed.assert_outcomes(passed=1)
    failed = pytester.runpytest(f"--lrp-model={lrp_project.biased.path}", "--strict-markers")
    failed.assert_outcomes(failed=1)
    failed.stdout.fnmatch_lines(["*relevance not conserved*", "*worst sample*"])


def test_expected_leak_is_xfailed_with_its_reason(lrp_project, pytester):
    lrp_project.rules("""
rules:
  - id: z
    analyzer: lrp.z
    tolerance: {rtol: 1.0e-6, atol: 0}
    xfail: "the bias absorbs relevance"
""")
    result = pytester.runpytest(f"--lrp-model={lrp_project.biased.path}", "rules.yaml", "-rx", "-k", "conservation")
    result.assert_outcomes(xfailed=1)
    result.stdout.fnmatch_lines(["XFAIL rules.yaml::conservation[[]biased-z[]] - the bias absorbs relevance*"])


def test_strict_xfail_that_conserves_fails_the_run(lrp_project, pytester):
    lrp_project.rules("""
rules:
  - id: z
    analyzer: lrp.z
    xfail: "believed to leak"
  - id: z-lenient
    analyzer: lrp.z
    xfail: {reason: "may leak", strict: false}
""")
    result = pytester.runpytest(f"--lrp-model={lrp_project.nobias.path}", "rules.yaml", "-rfX", "-k", "conservation")
    result.assert_outcomes(failed=1, xpassed=1)
    result.stdout.fnmatch_lines(["*conservation[[]nobias-z[]] (lrp.z)*", "[[]XPASS(strict)[]] believed to leak"])
    result.stdout.fnmatch_lines(
        [
            "FAILED rules.yaml::conservation[[]nobias-z[]]*",
            "XPASS rules.yaml::conservation[[]nobias-z-lenient[]] - may leak",
        ]
    )
    assert result.ret == 1


def test_crash_in_an_xfail_rule_stays_an_error(lrp_project, pytester):
    # raises= on the xfail mark: only a failed check is the expected failure.
    lrp_project.rules("""
rules:
  - id: bounded-without-bounds
    analyzer: deep_taylor.bounded
    xfail: "leaks"
""")
    result = pytester.runpytest(f"--lrp-model={lrp_project.biased.path}", "rules.yaml", "-k", "conservation")
    result.assert_outcomes(errors=1)


def test_positive_output_target_and_output_index(lrp_project, pytester):
    lrp_project.rules(f"""
defaults:
  inputs: {lrp_project.inputs}
rules:
  - id: neuron-2
    analyzer: lrp.z
    neuron_selection: 2
    tolerance: {{rtol: 0, atol: 0}}
""")
    result = pytester.runpytest(f"--lrp-model={lrp_project.biased.path}", "rules.yaml", "-k", "conservation")
    result.assert_outcomes(failed=1)
    x = np.load(lrp_project.inputs)["x"]
    targets = lrp_project.biased.outputs(x)[:, 2]
    sample, _, neuron, target, *_ = WORST.search(result.stdout.str()).groups()
    assert neuron == "2"
    np.testing.assert_allclose(float(target), targets[int(sample)], rtol=1e-5)
