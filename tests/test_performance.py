"""What the speed-ups must not change: the heatmaps, and the outcomes under pytest-xdist.

The timings themselves live in bench/ (python bench/run.py); nothing here is timed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from pytest_lrp.xdist_scheduling import analysis_scope

RULES = {  # id -> (analyzer, params): a spread of rule families, with and without reruns of the analyzer
    "z": ("lrp.z", {}),
    "alpha2-beta1": ("lrp.alpha_2_beta_1", {}),
    "epsilon-1": ("lrp.epsilon", {"epsilon": 1.0}),
    "deep-taylor": ("deep_taylor", {}),
    "integrated-gradients": ("integrated_gradients", {"steps": 8}),
}

SAVE_EVERY_RULE = "\n".join(
    ["import numpy as np", "import pytest", ""]
    + [
        f"@pytest.mark.lrp_rule({analyzer!r}, **{params!r})\n"
        f"def test_{rule_id.replace('-', '_')}(lrp_analysis):\n"
        f"    np.save({rule_id + '.npy'!r}, lrp_analysis.heatmaps)\n"
        for rule_id, (analyzer, params) in RULES.items()
    ]
)


def innvestigate_directly(tf, model_path: Path, x: np.ndarray) -> dict:
    """The straightforward analysis: load the file in a graph, strip the softmax, create_analyzer, analyze."""
    import innvestigate

    heatmaps = {}
    for rule_id, (analyzer, params) in RULES.items():
        with tf.Graph().as_default(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = innvestigate.model_wo_softmax(tf.keras.models.load_model(str(model_path), compile=False))
            heatmaps[rule_id] = innvestigate.create_analyzer(analyzer, model, **params).analyze(x)
    return heatmaps


def test_heatmaps_are_those_of_innvestigate_run_directly(lrp_project, pytester, tensorflow_imported_once):
    # Five analyses in one run: each in its own graph (and session), after others; none may differ.
    pytester.makepyfile(test_save=SAVE_EVERY_RULE)
    result = pytester.runpytest(f"--lrp-model={lrp_project.biased.path}", f"--lrp-inputs={lrp_project.inputs}")
    result.assert_outcomes(passed=len(RULES))
    x = np.load(lrp_project.inputs)["x"]
    expected = innvestigate_directly(tensorflow_imported_once, lrp_project.biased.path, x)
    for rule_id in RULES:
        got = np.load(pytester.path / f"{rule_id}.npy")
        assert np.abs(got).sum() > 0, rule_id
        np.testing.assert_array_equal(got, expected[rule_id], err_msg=rule_id)


def test_tests_of_one_analysis_share_an_xdist_work_unit(tmp_path):
    rules = tmp_path / "rules.yaml"
    assert analysis_scope("rules.yaml::conservation[cnn-z]", tmp_path, rules) == "rules.yaml::[cnn-z]"
    assert analysis_scope("rules.yaml::finite[cnn-z]", tmp_path, rules) == "rules.yaml::[cnn-z]"
    assert analysis_scope("rules.yaml::finite[cnn-z-plus]", tmp_path, rules) == "rules.yaml::[cnn-z-plus]"
    # anything else is scheduled test by test, as under xdist's --dist load
    assert analysis_scope("other.yaml::finite[cnn-z]", tmp_path, rules) == "other.yaml::finite[cnn-z]"
    assert analysis_scope("tests/test_a.py::test_b[cnn-z]", tmp_path, rules) == "tests/test_a.py::test_b[cnn-z]"


RULE_FILE = """
defaults:
  checks: [conservation, finite, determinism]
rules:
  - {id: z, analyzer: lrp.z, xfail: the bias absorbs relevance}
  - {id: flat, analyzer: lrp.flat}
  - {id: w-square, analyzer: lrp.w_square}
  - {id: alpha2-beta1, analyzer: lrp.alpha_2_beta_1, xfail: the bias enters both denominators}
"""


@pytest.mark.xdist
def test_xdist_gives_the_same_outcomes_with_each_analysis_on_one_worker(lrp_project, pytester):
    lrp_project.rules(RULE_FILE)
    args = [
        f"--lrp-model={lrp_project.biased.path}",
        f"--lrp-inputs={lrp_project.inputs}",
        "-v",
        "-p",
        "no:cacheprovider",
    ]
    serial = pytester.runpytest_subprocess(*args, "rules.yaml", "-n", "0")
    parallel = pytester.runpytest_subprocess(*args, "rules.yaml", "-n", "2")
    assert outcomes(parallel) == outcomes(serial)
    assert len(outcomes(serial)) == 12
    workers = {}
    for line in parallel.outlines:
        found = re.match(r"\[(gw\d+)\].* rules\.yaml::\w+\[(.+?)\]", line)
        if found:
            workers.setdefault(found.group(2), set()).add(found.group(1))
    assert len(workers) == 4 and all(len(w) == 1 for w in workers.values()), workers


def outcomes(result) -> dict:
    found = {}
    for line in result.outlines:
        match = re.search(
            r"(rules\.yaml::\S+) (PASSED|FAILED|XFAIL|XPASS|ERROR)|(PASSED|FAILED|XFAIL|XPASS|ERROR) (rules\.yaml::\S+)",
            line,
        )
        if match:
            found[match.group(1) or match.group(4)] = match.group(2) or match.group(3)
    return found


def test_importing_the_plugin_imports_neither_numpy_nor_yaml():
    # pytest imports the plugin in every run; these two were ~100 ms of start-up (bench/run.py).
    probe = (
        "import sys, pytest_lrp.plugin; print(sorted(m for m in ('numpy', 'yaml', 'tensorflow') if m in sys.modules))"
    )
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert imported == "[]", (
        f"importing pytest_lrp.plugin imported {imported}: use 'from .lazy import np' (see lazy.py)"
    )
