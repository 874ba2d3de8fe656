"""The properties besides conservation: one test per (check, model, rule), each failing with its numbers."""

from __future__ import annotations

import re

import numpy as np


def z_rule(project, *lines) -> str:
    """A rule file with the one rule 'z' (lrp.z) on the shared inputs, plus the given lines of that rule."""
    return f"defaults:\n  inputs: {project.inputs}\nrules:\n  - id: z\n    analyzer: lrp.z\n" + "".join(
        f"    {line}\n" for line in lines
    )


def test_checks_pick_the_tests_and_their_ids(lrp_project, pytester):
    lrp_project.rules("""
defaults:
  checks: [conservation, positive]
rules:
  - id: z
    analyzer: lrp.z
  - id: z-plus
    analyzer: lrp.z_plus
    checks: [determinism, finite]
    baseline: true
  - id: flat
    analyzer: lrp.flat
    baseline: false
""")
    model = f"--lrp-model={lrp_project.nobias.path}"
    result = pytester.runpytest(model, "rules.yaml", "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "rules.yaml::conservation[[]nobias-z[]]",
            "rules.yaml::conservation[[]nobias-flat[]]",
            "rules.yaml::finite[[]nobias-z-plus[]]",
            "rules.yaml::positive[[]nobias-z[]]",
            "rules.yaml::positive[[]nobias-flat[]]",
            "rules.yaml::determinism[[]nobias-z-plus[]]",
            "rules.yaml::baseline[[]nobias-z-plus[]]",
            "7 tests collected*",
        ]
    )
    by_keyword = pytester.runpytest(model, "rules.yaml", "--collect-only", "-q", "-k", "positive")
    by_keyword.stdout.fnmatch_lines(["*positive[[]nobias-z[]]", "*positive[[]nobias-flat[]]", "2/7 tests collected*"])
    pytester.runpytest(model, "rules.yaml", "--collect-only", "-q", "-m", "lrp").stdout.fnmatch_lines(
        ["7 tests collected*"]
    )
    by_marker = pytester.runpytest(
        model, "rules.yaml", "--collect-only", "-q", "-m", "lrp_positive or lrp_baseline", "--strict-markers"
    )
    by_marker.stdout.fnmatch_lines(
        [
            "*positive[[]nobias-z[]]",
            "*positive[[]nobias-flat[]]",
            "*baseline[[]nobias-z-plus[]]",
            "3/7 tests collected*",
        ]
    )


def test_without_checks_a_rule_gets_conservation_and_finite(lrp_project, pytester):
    lrp_project.rules("rules:\n  - id: z\n    analyzer: lrp.z\n")
    result = pytester.runpytest(f"--lrp-model={lrp_project.nobias.path}", "rules.yaml", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*conservation[[]nobias-z[]]", "*finite[[]nobias-z[]]", "2 tests collected*"])


def test_check_names_are_validated(lrp_project, pytester):
    lrp_project.rules("rules:\n  - id: a\n    analyzer: lrp.z\n    checks: [conservation, postive]\n")
    typo = pytester.runpytest("rules.yaml", "--lrp-model=m.h5")
    typo.stdout.fnmatch_lines(
        ["*rules.yaml: rule 'a': key 'checks': unknown check 'postive' (did you mean 'positive'?)"]
    )
    lrp_project.rules("defaults:\n  baseline: yes please\nrules:\n  - id: a\n    analyzer: lrp.z\n")
    not_bool = pytester.runpytest("rules.yaml", "--lrp-model=m.h5")
    not_bool.stdout.fnmatch_lines(
        ["*rules.yaml: key 'defaults': key 'baseline': expected true or false, got 'yes please'"]
    )
    lrp_project.rules("rules:\n  - id: a\n    analyzer: lrp.z\n    checks: [baseline]\n    baseline: false\n")
    nothing_left = pytester.runpytest("rules.yaml", "--lrp-model=m.h5")
    nothing_left.stdout.fnmatch_lines(
        ["*rules.yaml: rule 'a': key 'checks': no check left to run; name at least one of *"]
    )


def test_xfail_excuses_only_the_conservation_leak(lrp_project, pytester):
    lrp_project.rules(
        z_rule(
            lrp_project,
            "tolerance: {rtol: 1.0e-6, atol: 0}",
            "checks: [conservation, finite, determinism]",
            "xfail: leaks",
        )
    )
    result = pytester.runpytest(f"--lrp-model={lrp_project.biased.path}", "rules.yaml", "-v")
    result.assert_outcomes(xfailed=1, passed=2)
    result.stdout.fnmatch_lines(
        ["*finite[[]biased-z[]] PASSED*", "*determinism[[]biased-z[]] PASSED*"], consecutive=False
    )


def test_positive_fails_with_the_most_negative_value_numpy_computes(lrp_project, pytester):
    lrp_project.rules(f"""
defaults:
  inputs: {lrp_project.inputs}
  checks: [positive]
rules:
  - id: ixg
    analyzer: input_t_gradient
  - id: w-square
    analyzer: lrp.w_square
  - id: z
    analyzer: lrp.z
""")
    # On the bias-free net every explained output is positive, so the w-square rule
    # (squared weights only) gives positive relevance, and input x gradient (the z rule here) does not.
    # Without a reference check nothing says the negative values are its formula's: it fails. The z rule's
    # reference runs (leak accounting) and shows the same negative values: an expected failure.
    result = pytester.runpytest(f"--lrp-model={lrp_project.nobias.path}", "rules.yaml", "-v", "-rx")
    result.assert_outcomes(failed=1, passed=1, xfailed=1)
    result.stdout.fnmatch_lines(
        ["XFAIL *positive[[]nobias-z[]] - negative by its formula: the numpy reference's own heatmap*"]
    )
    result.stdout.fnmatch_lines(["*positive[[]nobias-w-square[]] PASSED*"])
    x = np.load(lrp_project.inputs)["x"]
    relevance = lrp_project.nobias.lrp_z(x)
    below = relevance < -1e-6  # the default tolerance's atol
    assert below.any(), "the test network must give some negative z-rule relevance"
    worst = int(np.argmin(relevance.min(axis=1)))
    output = result.stdout.str()
    assert (
        f"negative relevance: {int(below.sum())} values in {int(below.any(axis=1).sum())} of {len(x)} samples "
        "below -atol = -1e-06 (input_t_gradient on nobias)"
    ) in output
    minimum, index = re.search(rf"worst sample {worst}: minimum (\S+) at index \((\d+)\)", output).groups()
    np.testing.assert_allclose(float(minimum), relevance[worst].min(), rtol=1e-4)
    assert int(index) == int(np.argmin(relevance[worst]))


def test_random_analyzers_fail_determinism_and_batch_invariance(lrp_project, pytester):
    # innvestigate's `random` and `smoothgrad` draw new noise in every run: the honest
    # failing cases, next to deterministic rules that pass.
    lrp_project.rules(f"""
defaults:
  inputs: {lrp_project.inputs}
  checks: [batch_invariance, determinism]
rules:
  - id: noise
    analyzer: random
  - id: z
    analyzer: lrp.z
  - id: gradient
    analyzer: gradient
""")
    result = pytester.runpytest(f"--lrp-model={lrp_project.biased.path}", "rules.yaml", "-v")
    result.assert_outcomes(failed=2, passed=4)
    result.stdout.fnmatch_lines(
        [
            "*not batch invariant: a sample analyzed alone gets another heatmap than inside the batch of 6 "
            "(random on biased; innvestigate#91; baseline_tolerance rtol=0.0001, atol=1e-06*",
            "max abs difference *; * of 30 values (*%) outside the tolerance; correlation in the batch vs alone *",
            "worst sample *: max abs difference * at index (*) (* in the batch, * alone); * of 5 values outside the tolerance; correlation *",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*not deterministic: analyzing the same 6 inputs twice gave different heatmaps (random on biased; innvestigate#118)",
            "max abs difference *; * of 30 values (*%) differ; correlation first vs second *",
        ]
    )


def test_all_checks_of_a_rule_share_one_analysis_and_one_analyzer_build(lrp_project, pytester):
    # Counting analyzer constructions across the inner run: every check of the rule
    # together must build it once, also batch_invariance and determinism, whose extra
    # runs reuse the analyzer.
    pytester.makeconftest("""
        import innvestigate.analyzer.relevance_based.relevance_analyzer as relevance

        original = relevance.LRPZ.__init__
        builds = []

        def counting(self, *args, **kwargs):
            builds.append(1)
            original(self, *args, **kwargs)

        def pytest_configure(config):
            relevance.LRPZ.__init__ = counting

        def pytest_unconfigure(config):
            relevance.LRPZ.__init__ = original
            with open("builds.txt", "w") as f:
                f.write(str(len(builds)))
    """)
    lrp_project.rules(z_rule(lrp_project, "checks: [conservation, finite, positive, batch_invariance, determinism]"))
    result = pytester.runpytest(f"--lrp-model={lrp_project.nobias.path}", "rules.yaml")
    result.assert_outcomes(passed=4, xfailed=1)  # positive: the z rule's formula gives negative relevance
    assert (pytester.path / "builds.txt").read_text() == "1"


def test_a_non_finite_heatmap_fails_finite_even_for_an_expected_leak(lrp_project, pytester):
    # No small Keras model makes innvestigate return NaN reliably (its divisions are
    # stabilized), so a conftest corrupts one value of the finished heatmaps.
    pytester.makeconftest("""
        import numpy as np
        import pytest_lrp.engine.analysis as analysis

        original = analysis.analyze

        def with_a_nan(*args, **kwargs):
            result = original(*args, **kwargs)
            result.heatmaps = result.heatmaps.copy()
            result.heatmaps[4, 1] = np.nan
            return result

        def pytest_configure(config):
            analysis.analyze = with_a_nan

        def pytest_unconfigure(config):
            analysis.analyze = original
    """)
    lrp_project.rules(z_rule(lrp_project, "checks: [finite]", "xfail: leaks"))
    result = pytester.runpytest(f"--lrp-model={lrp_project.biased.path}", "rules.yaml")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["heatmap is not finite: 1 of 6 samples contain NaN or Inf (first: sample 4; lrp.z on biased)"]
    )
