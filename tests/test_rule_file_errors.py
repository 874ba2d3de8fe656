"""A broken rule file gives one line naming the file, the rule and the key."""

from __future__ import annotations

import pytest

CASES = {
    "syntax": ("rules:\n  - id: a\n    analyzer: [lrp.z\n", "rules.yaml: line 4: YAML syntax error: *"),
    "empty": ("", "rules.yaml: the file is empty; expected a mapping with a 'rules' list"),
    "no-rules": ("defaults: {samples: 2}\n", "rules.yaml: no 'rules' list; add 'rules:' with at least one rule"),
    "rules-not-list": ("rules: {id: a}\n", "rules.yaml: key 'rules': expected a non-empty list of rules, got a mapping"),
    "unknown-top-key": ("rule:\n  - {id: a, analyzer: lrp.z}\n", "rules.yaml: key 'rule': unknown top-level key (did you mean 'rules'?)"),
    "unknown-rule-key": (
        "rules:\n  - {id: a, analyzer: lrp.z, tolerence: {rtol: 1}}\n",
        "rules.yaml: rule 'a': key 'tolerence': unknown key (did you mean 'tolerance'?)",
    ),
    "unknown-analyzer": (
        "rules:\n  - {id: ab, analyzer: lrp.alpha2_beta1}\n",
        "rules.yaml: rule 'ab': key 'analyzer': unknown analyzer 'lrp.alpha2_beta1' (close matches: lrp.alpha_2_beta_1*",
    ),
    "negative-tolerance": (
        "rules:\n  - {id: a, analyzer: lrp.z, tolerance: {rtol: -1}}\n",
        "rules.yaml: rule 'a': key 'tolerance': key 'rtol': expected a non-negative number, got -1",
    ),
    "text-tolerance": (
        "rules:\n  - {id: a, analyzer: lrp.z, tolerance: {atol: small}}\n",
        "rules.yaml: rule 'a': key 'tolerance': key 'atol': expected a non-negative number, got 'small'",
    ),
    "duplicate-id": (
        "rules:\n  - {id: a, analyzer: lrp.z}\n  - {id: a, analyzer: lrp.flat}\n",
        "rules.yaml: rule 'a': key 'id': duplicate rule id; ids must be unique",
    ),
    "bad-target": (
        "rules:\n  - {id: a, analyzer: lrp.z, target: relu}\n",
        "rules.yaml: rule 'a': key 'target': unknown target 'relu' (known: output, positive_output, output_minus_reference)",
    ),
    "xfail-without-reason": (
        "rules:\n  - {id: a, analyzer: lrp.z, xfail: {strict: true}}\n",
        "rules.yaml: rule 'a': key 'xfail': key 'reason': an expected failure needs a reason explaining the leak",
    ),
    "reserved-param": (
        "rules:\n  - {id: a, analyzer: lrp.z, params: {neuron_selection_mode: index}}\n",
        "rules.yaml: rule 'a': key 'params': 'neuron_selection_mode' cannot be set here: use the rule key 'neuron_selection' instead",
    ),
    "bad-defaults-samples": (
        "defaults: {samples: 0}\nrules:\n  - {id: a, analyzer: lrp.z}\n",
        "rules.yaml: key 'defaults': key 'samples': expected a whole number >= 1, got 0",
    ),
}


@pytest.mark.parametrize("text, line", CASES.values(), ids=CASES.keys())
def test_bad_rule_file_gives_one_line(pytester, text, line):
    (pytester.path / "rules.yaml").write_text(text)
    result = pytester.runpytest("rules.yaml", "--lrp-model=whatever.h5")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error, as for a broken test module
    result.stdout.fnmatch_lines(["*ERROR collecting rules.yaml*", line])
    output = result.stdout.str()
    assert "Traceback" not in output and "pytest_lrp" not in output and "yaml/" not in output


def test_bad_rule_file_does_not_import_tensorflow(pytester):
    (pytester.path / "rules.yaml").write_text(CASES["unknown-analyzer"][0])
    result = pytester.runpytest_subprocess(
        "rules.yaml", "--lrp-model=m.h5", "-p", "no:cacheprovider", "--import-mode=importlib",
        "-o", "addopts=", "--co",
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    pytester.makeconftest("import sys\ndef pytest_sessionfinish():\n    print('TF-IMPORTED' if 'tensorflow' in sys.modules else 'TF-NOT-IMPORTED')\n")
    result = pytester.runpytest_subprocess("rules.yaml", "--lrp-model=m.h5", "-s")
    result.stdout.fnmatch_lines(["*TF-NOT-IMPORTED*"])


def test_marker_rule_is_validated_like_a_rule_file(lrp_project, pytester):
    pytester.makepyfile(test_bad_marker="""
        import pytest

        @pytest.mark.lrp_rule("lrp.epsilonn")
        def test_bad(lrp_analysis):
            pass
    """)
    result = pytester.runpytest(f"--lrp-model={lrp_project.nobias.path}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_bad_marker.py::test_bad[[]nobias[]]: rule 'lrp.epsilonn': key 'analyzer': unknown analyzer 'lrp.epsilonn' (close matches: lrp.epsilon*"])
