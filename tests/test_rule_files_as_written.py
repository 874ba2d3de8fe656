"""Rule files and paths as users write them: YAML 1.2 numbers, repeated keys, symlinked models,
this checkout's rules.yaml used from another folder, and hand-written tests' failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pytest_lrp.config.rulefile import load_rule_file

PROJECT_RULES = Path(__file__).resolve().parents[1] / "rules.yaml"


def epsilon_sums(net, x: np.ndarray, epsilon: float) -> np.ndarray:
    """Heatmap sums of innvestigate's epsilon rule without biases (max-activation output), in numpy."""
    activations = net.forward(x)
    out = activations[-1]
    rows, top = np.arange(len(x)), out.argmax(axis=1)
    relevance = np.zeros_like(out)
    relevance[rows, top] = out[rows, top]
    for w, a in reversed(list(zip(net.kernels, activations[:-1]))):
        z = a @ w
        relevance = a * ((relevance / (z + epsilon * np.where(z >= 0, 1.0, -1.0))) @ w.T)
    return relevance.sum(axis=1)


def test_numbers_without_a_dot_are_numbers_everywhere(lrp_project, pytester):
    """PyYAML alone reads 1e-9 as the string '1e-9' and the analyzer crashed on it."""
    lrp_project.rules("""
defaults:
  tolerance: {rtol: 1e-5, atol: 1e-6}
  max_error: 2e0
rules:
  - id: conserving
    analyzer: lrp.epsilon
    params: {epsilon: 1e-9, bias: false}
  - id: leaking
    analyzer: lrp.epsilon
    params: {epsilon: 1e1, bias: false}
    max_error: 1E+2
    xfail: a large epsilon absorbs relevance
""")
    result = pytester.runpytest(
        "rules.yaml",
        f"--lrp-model={lrp_project.nobias.path}",
        f"--lrp-inputs={lrp_project.inputs}",
        "-k",
        "conservation",
        "--lrp-report=report.json",
    )
    result.assert_outcomes(passed=1, xfailed=1)
    records = {r["rule"]: r for r in json.loads((pytester.path / "report.json").read_text())["results"]}
    assert records["conserving"]["params"] == {"epsilon": 1e-9, "bias": False}
    assert records["conserving"]["tolerance"] == {"rtol": 1e-5, "atol": 1e-6}
    assert records["conserving"]["max_error_ceiling"] == 2.0 and records["leaking"]["max_error_ceiling"] == 100.0
    # The numbers reached the analyzer: the leak matches the epsilon rule computed with epsilon = 10.
    x = np.load(lrp_project.inputs)["x"]
    np.testing.assert_allclose(
        records["leaking"]["sums"], epsilon_sums(lrp_project.nobias, x, 10.0), rtol=1e-4, atol=1e-6
    )
    assert max(records["leaking"]["relative_errors"]) > 0.01


def test_yaml_1_2_integers_and_what_stays_text(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        "defaults:\n  samples: 010\n  seed: 0x1F\nrules:\n  - {id: 12:30, analyzer: lrp.z, neuron_selection: 0o7}\n"
    )
    with pytest.raises(Exception, match="an id may not contain spaces, brackets, slashes or colons"):
        load_rule_file(path)  # YAML 1.1 made 12:30 the number 750; in YAML 1.2 it is text
    path.write_text(path.read_text().replace("12:30", "twelve"))
    rule_file = load_rule_file(path)
    assert (rule_file.samples, rule_file.seed) == (10, 31)  # YAML 1.1 read 010 as octal 8
    assert rule_file.rules[0].neuron_selection == 7


@pytest.mark.parametrize(
    "text, line",
    [
        (
            "defaults:\n  samples: 2\n  seed: 1\n  samples: 3\nrules:\n  - {id: a, analyzer: lrp.z}\n",
            "rules.yaml: line 4: key 'samples' given twice in one mapping (first on line 2)",
        ),
        (
            "rules:\n  - id: a\n    analyzer: lrp.epsilon\n    params: {epsilon: 0.1, epsilon: 1e-9}\n",
            "rules.yaml: line 4: key 'epsilon' given twice in one mapping (first on line 4)",
        ),
    ],
    ids=["defaults", "flow-mapping"],
)
def test_a_key_given_twice_is_an_error_naming_line_and_key(pytester, text, line):
    (pytester.path / "rules.yaml").write_text(text)
    result = pytester.runpytest("rules.yaml", "--lrp-model=whatever.h5")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting rules.yaml*", line])
    assert "Traceback" not in result.stdout.str()


def test_merge_keys_may_still_be_overridden(tmp_path):
    """'<<: *anchor' followed by a key of its own is YAML's way to override, not a repeat."""
    path = tmp_path / "rules.yaml"
    path.write_text(
        "defaults:\n  tolerance: &tight {rtol: 1e-6, atol: 1e-7}\n"
        "rules:\n  - id: a\n    analyzer: lrp.z\n    tolerance: {<<: *tight, rtol: 1e-3}\n"
    )
    tolerance = load_rule_file(path).rules[0].tolerance
    assert (tolerance.rtol, tolerance.atol) == (1e-3, 1e-7)


@pytest.mark.parametrize("given_by", ["command-line", "rule-file"])
def test_a_symlinked_model_is_named_as_written(lrp_project, pytester, given_by):
    # As DVC's cache does: the file is named by its hash, without extension; the user's name is a link.
    store = pytester.path / "cache" / "3f"
    store.mkdir(parents=True)
    target = store / "2a9c41d07be5e8f6a1b0c3d4e5f60718"
    target.write_bytes(lrp_project.nobias.path.read_bytes())
    (pytester.path / "models").mkdir()
    link = pytester.path / "models" / "digits_net.h5"
    link.symlink_to(os.path.relpath(target, link.parent))
    models = "\ndefaults:\n  models: [models/digits_net.h5]\n" if given_by == "rule-file" else ""
    lrp_project.rules(models + "rules:\n  - {id: z, analyzer: lrp.z}\n")
    args = ["rules.yaml", f"--lrp-inputs={lrp_project.inputs}", "-v", "--lrp-report=report.json", "-k", "conservation"]
    result = pytester.runpytest(*args, *(["--lrp-model=models/digits_net.h5"] if given_by == "command-line" else []))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*rules.yaml::conservation?digits_net-z? PASSED*"])
    assert "2a9c41d07" not in result.stdout.str()
    (record,) = json.loads((pytester.path / "report.json").read_text())["results"]
    assert record["model"] == "digits_net"
    assert record["model_path"] == str(link)


def test_this_projects_rule_file_works_from_another_folder(pytester):
    """The checkout's conftest and test setup must not leak into a run that only uses its rules.yaml."""
    assert PROJECT_RULES.is_file()
    pytester.makepyfile(test_mine="def test_mine():\n    assert True\n")
    result = pytester.runpytest(f"--lrp-rules={PROJECT_RULES}", "-v", "-k", "mine or (conservation and w-square)")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_mine.py::test_mine PASSED*", "*conservation?cnn-w-square? PASSED*"])


def test_a_failing_assert_conserved_shows_the_test_not_the_plugin(lrp_project, pytester):
    pytester.makepyfile(
        test_handwritten="""
        import pytest

        @pytest.mark.lrp_rule("lrp.z", tolerance={"rtol": 1e-6, "atol": 0})
        def test_leak(lrp_analysis):
            lrp_analysis.assert_conserved()

        @pytest.mark.lrp_rule("lrp.z", id="exploding", max_error=1e-9)
        def test_ceiling(lrp_analysis):
            lrp_analysis.assert_conserved()
    """
    )
    result = pytester.runpytest(f"--lrp-model={lrp_project.biased.path}", f"--lrp-inputs={lrp_project.inputs}")
    result.assert_outcomes(failed=2)
    output = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*def test_leak(lrp_analysis):*",
            ">*lrp_analysis.assert_conserved()",
            "E*relevance not conserved*",
            "*def test_ceiling(lrp_analysis):*",
            ">*lrp_analysis.assert_conserved()",
            "E*beyond the rule's ceiling max_error=1e-09*",
        ]
    )
    # No frame of the plugin: neither its source lines nor its files.
    for plugin_line in (
        "raise LrpCheckFailed",
        "raise LrpBeyondExpectation",
        "check_conservation(self)",
        "pytest_lrp/",
        "conservation.py",
    ):
        assert plugin_line not in output
