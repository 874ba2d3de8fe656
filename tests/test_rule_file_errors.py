"""A broken rule file gives one line naming the file, the rule and the key, at collection (exit code 2),
without importing TensorFlow; whatever YAML the file holds, the loader raises only that error."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_lrp.base.errors import LrpUsageError, shown
from pytest_lrp.config.rulefile import load_rule_file

CASES = {
    "syntax": ("rules:\n  - id: a\n    analyzer: [lrp.z\n", "rules.yaml: line 4: YAML syntax error: *"),
    "empty": ("", "rules.yaml: the file is empty; expected a mapping with a 'rules' list"),
    "no-rules": ("defaults: {samples: 2}\n", "rules.yaml: no 'rules' list; add 'rules:' with at least one rule"),
    "rules-not-list": (
        "rules: {id: a}\n",
        "rules.yaml: key 'rules': expected a non-empty list of rules, got a mapping",
    ),
    "unknown-top-key": (
        "rule:\n  - {id: a, analyzer: lrp.z}\n",
        "rules.yaml: key 'rule': unknown top-level key (did you mean 'rules'?)",
    ),
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
        "rules.yaml",
        "--lrp-model=m.h5",
        "-p",
        "no:cacheprovider",
        "--import-mode=importlib",
        "-o",
        "addopts=",
        "--co",
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    pytester.makeconftest(
        "import sys\ndef pytest_sessionfinish():\n    print('TF-IMPORTED' if 'tensorflow' in sys.modules else 'TF-NOT-IMPORTED')\n"
    )
    result = pytester.runpytest_subprocess("rules.yaml", "--lrp-model=m.h5", "-s")
    result.stdout.fnmatch_lines(["*TF-NOT-IMPORTED*"])


def test_marker_rule_is_validated_like_a_rule_file(lrp_project, pytester):
    pytester.makepyfile(
        test_bad_marker="""
        import pytest

        @pytest.mark.lrp_rule("lrp.epsilonn")
        def test_bad(lrp_analysis):
            pass
    """
    )
    result = pytester.runpytest(f"--lrp-model={lrp_project.nobias.path}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_bad_marker.py::test_bad[[]nobias[]]: rule 'lrp.epsilonn': key 'analyzer': unknown analyzer 'lrp.epsilonn' (close matches: lrp.epsilon*"
        ]
    )


# --- analyzer parameters, read from innvestigate's source ------------------------------------------

RULE_FILE_CASES = {
    "param-close-match": (
        "rules:\n  - {id: eps, analyzer: lrp.epsilon, params: {epsilom: 0.1}}\n",
        "rules.yaml: rule 'eps': key 'params': analyzer 'lrp.epsilon' does not accept 'epsilom' (did you mean 'epsilon'?)",
    ),
    "param-of-a-base-class": (
        "rules:\n  - {id: z, analyzer: lrp.z, params: {reverse_chek_finite: true}}\n",
        "rules.yaml: rule 'z': key 'params': analyzer 'lrp.z' does not accept 'reverse_chek_finite' (did you mean 'reverse_check_finite'?)",
    ),
    # lrp.alpha_2_beta_1 fixes alpha and beta itself; passing them would be a "multiple values" TypeError.
    "param-fixed-by-the-preset": (
        "rules:\n  - {id: ab, analyzer: lrp.alpha_2_beta_1, params: {alpha: 3}}\n",
        "rules.yaml: rule 'ab': key 'params': analyzer 'lrp.alpha_2_beta_1' does not accept 'alpha' (it accepts: *)",
    ),
    "param-no-close-match": (
        "rules:\n  - {id: ig, analyzer: integrated_gradients, params: {colour: red}}\n",
        "rules.yaml: rule 'ig': key 'params': analyzer 'integrated_gradients' does not accept 'colour' "
        "(it accepts: disable_model_checks, postprocess, reference_inputs, steps)",
    ),
    # Found by the fuzz test below: a key from the file must not break the message into two lines.
    "newline-in-a-key": (
        'rules:\n  - {id: a, analyzer: lrp.z, "tole\\nrance": {}}\n',
        "rules.yaml: rule 'a': key 'tole\\nrance': unknown key (did you mean 'tolerance'?)",
    ),
}


@pytest.mark.parametrize("text, line", RULE_FILE_CASES.values(), ids=RULE_FILE_CASES.keys())
def test_bad_rule_file_params(pytester, text, line):
    (pytester.path / "rules.yaml").write_text(text)
    pytester.makeconftest(
        "import sys\ndef pytest_sessionfinish():\n    print('TF-IMPORTED' if 'tensorflow' in sys.modules else 'TF-NOT-IMPORTED')\n"
    )
    result = pytester.runpytest_subprocess("rules.yaml", "--lrp-model=whatever.h5", "-p", "no:cacheprovider", "-s")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting rules.yaml*", line])
    result.stdout.fnmatch_lines(["*TF-NOT-IMPORTED*"])  # the params are read from innvestigate's source, not imported
    assert "Traceback" not in result.stdout.str()


def test_accepted_params_pass_validation(pytester):
    """Every parameter the default suite and the README use is one the analyzer takes."""
    (pytester.path / "rules.yaml").write_text(
        "rules:\n"
        "  - {id: dt, analyzer: deep_taylor.bounded, params: {low: 0.0, high: 1.0}}\n"
        "  - {id: eps, analyzer: lrp.epsilon, params: {epsilon: 1.0e-9, bias: false}}\n"
        "  - {id: ab, analyzer: lrp.alpha_beta, params: {alpha: 3, beta: 2}}\n"
        "  - {id: ig, analyzer: integrated_gradients, params: {steps: 8, reference_inputs: 0.0}, target: output_minus_reference}\n"
        "  - {id: pa, analyzer: lrp.sequential_preset_a, params: {epsilon: 0.1}}\n"
    )
    result = pytester.runpytest_subprocess(
        "rules.yaml", "--lrp-model=whatever.h5", "--co", "-q", "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [f"rules.yaml::conservation[[]whatever-{rule}[]]" for rule in ("dt", "eps", "ab", "ig", "pa")]
    )


def test_a_missing_rule_file_named_on_the_command_line_is_a_usage_error(pytester):
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = pytester.runpytest("--lrp-rules=nothere.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # as pytest's own "file or directory not found"
    result.stderr.fnmatch_lines(
        ["ERROR: nothere.yaml: rule file not found (named by --lrp-rules or the ini key lrp_rules)"]
    )


# --- fuzzing the loader: whatever YAML holds, the only exception is the documented one ----------

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12)
KEYS = st.sampled_from(
    [
        "rules",
        "defaults",
        "id",
        "analyzer",
        "params",
        "tolerance",
        "rtol",
        "atol",
        "target",
        "xfail",
        "reason",
        "strict",
        "neuron_selection",
        "max_error",
        "models",
        "inputs",
        "samples",
        "seed",
        "epsilon",
        "lrp.z",
        "checks",
        "baseline",
        "baseline_tolerance",
    ]
) | st.text(max_size=8)
ANALYZERS = st.sampled_from(["lrp.z", "lrp.epsilon", "deep_taylor.bounded", "integrated_gradients", "lrp.alpha_beta"])
values = st.recursive(
    scalars | ANALYZERS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=20,
)
rules = st.lists(
    st.fixed_dictionaries(
        {"id": st.text(min_size=1, max_size=5) | st.integers(), "analyzer": ANALYZERS | values},
        optional={
            "params": values,
            "tolerance": values,
            "target": values,
            "xfail": values,
            "neuron_selection": values,
            "max_error": values,
        },
    ),
    max_size=3,
)
documents = values | st.fixed_dictionaries({"rules": rules | values}, optional={"defaults": values})


@pytest.mark.slow
@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents)
def test_rule_file_loader_raises_only_usage_errors(tmp_path, document):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    try:
        load_rule_file(path)
    except LrpUsageError as exc:
        assert str(exc).isprintable() and str(exc).startswith(shown(path) + ": ")


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60))
def test_rule_file_loader_survives_any_text(tmp_path, text):
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_rule_file(path)
    except LrpUsageError:
        pass
