"""Which Keras the session gets: pytest-lrp makes tf.keras Keras 2 (TF_USE_LEGACY_KERAS=1 under
TensorFlow >= 2.16) only for sessions with LRP tests, says so, and says in one line when it
cannot (TensorFlow already imported with Keras 3). Each case needs a fresh process: the
choice is made when TensorFlow is imported."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import pytest

from pytest_lrp.base import tf_runtime

RULES = "rules:\n  - {id: z, analyzer: lrp.z, checks: [conservation]}\n"
RECORD_ENVIRONMENT = """
import os

def test_records_the_environment():
    with open("seen.txt", "w") as f:
        f.write(os.environ.get("TF_USE_LEGACY_KERAS", "unset"))
"""


def at_least_2_16() -> bool:
    major, minor = (int(part) for part in sys.modules["tensorflow"].__version__.split(".")[:2])
    return (major, minor) >= (2, 16)


@pytest.fixture
def fresh_process(monkeypatch):
    """The environment of a user who set nothing."""
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)


def test_lrp_session_gets_keras_2_and_says_which(lrp_project, pytester, fresh_process, tensorflow_imported_once):
    lrp_project.rules(RULES)
    pytester.makepyfile(test_plain=RECORD_ENVIRONMENT)
    result = pytester.runpytest_subprocess(
        f"--lrp-model={lrp_project.nobias.path}", f"--lrp-inputs={lrp_project.inputs}"
    )
    result.assert_outcomes(passed=2)
    # This process imported TensorFlow through the plugin too: its tf.keras is what the session must report.
    tf = tensorflow_imported_once
    package = "tf_keras" if at_least_2_16() else "keras"
    assert tf.keras.__file__.startswith(importlib.util.find_spec(package).submodule_search_locations[0])
    version = importlib.metadata.version(package)
    assert version.startswith("2.")
    line = f"lrp: tf.keras is Keras {version} ({package}) under TensorFlow {tf.__version__}"
    if at_least_2_16():
        result.stdout.fnmatch_lines([line + "; TF_USE_LEGACY_KERAS=1 set by pytest-lrp"])
        # Set at collection, so the session's other tests see it whatever their order.
        assert (pytester.path / "seen.txt").read_text() == "1"
    else:
        result.stdout.fnmatch_lines([line])
        assert (pytester.path / "seen.txt").read_text() == "unset"  # nothing to choose before TF 2.16


TWO_RULES = RULES + "  - {id: eps, analyzer: lrp.epsilon, checks: [conservation]}\n"


def _keras_lines(result) -> list:
    return [line for line in result.outlines if line.startswith("lrp: tf.keras is")]


@pytest.mark.xdist
def test_under_xdist_the_controller_prints_the_workers_line_once(
    lrp_project, pytester, fresh_process, tensorflow_imported_once
):
    """The controller imports no TensorFlow and collects nothing; both workers send their line, it shows once."""
    lrp_project.rules(TWO_RULES)
    result = pytester.runpytest_subprocess(
        f"--lrp-model={lrp_project.nobias.path}", f"--lrp-inputs={lrp_project.inputs}", "-n", "2", "-v"
    )
    result.assert_outcomes(passed=2)
    assert {"[gw0]", "[gw1]"} <= {
        line.split()[0] for line in result.outlines if line.startswith("[gw")
    }  # both workers ran a test
    tf = tensorflow_imported_once
    package = "tf_keras" if at_least_2_16() else "keras"
    line = f"lrp: tf.keras is Keras {importlib.metadata.version(package)} ({package}) under TensorFlow {tf.__version__}"
    if at_least_2_16():
        line += "; TF_USE_LEGACY_KERAS=1 set by pytest-lrp"
    assert _keras_lines(result) == [line]
    # A header: after the workers' collection, before the first outcome.
    shown = result.outlines.index(line)
    assert any(previous.startswith("2 workers [2 items]") for previous in result.outlines[:shown])
    assert not any(" PASSED " in previous for previous in result.outlines[:shown])


@pytest.mark.xdist
def test_under_xdist_each_workers_own_keras_is_shown(lrp_project, pytester, fresh_process):
    """A worker whose collection imported TensorFlow with Keras 3 says so, though the other worker's Keras is fine."""
    if not tf_runtime.at_least_2_16():
        pytest.skip(
            "before TensorFlow 2.16 tf.keras is Keras 2 however TensorFlow is imported: the workers cannot differ"
        )
    pytester.makeconftest("import os\nif os.environ.get('PYTEST_XDIST_WORKER') == 'gw1':\n    import tensorflow\n")
    lrp_project.rules(TWO_RULES)
    result = pytester.runpytest_subprocess(
        f"--lrp-model={lrp_project.nobias.path}", f"--lrp-inputs={lrp_project.inputs}", "-n", "2"
    )
    result.assert_outcomes(passed=1, errors=1)
    tf_version = tf_runtime.tensorflow_release()
    result.stdout.fnmatch_lines_random(
        [
            f"lrp: tf.keras is Keras {importlib.metadata.version('tf_keras')} (tf_keras) under TensorFlow {tf_version}; TF_USE_LEGACY_KERAS=1 set by pytest-lrp",
            f"lrp: tf.keras is Keras {importlib.metadata.version('keras')} (keras) under TensorFlow {tf_version}; "
            f"TensorFlow {tf_version} was imported with tf.keras = Keras 3 before pytest-lrp could set TF_USE_LEGACY_KERAS=1*",
        ]
    )
    assert len(_keras_lines(result)) == 2


def test_session_without_lrp_tests_is_left_alone(pytester, fresh_process):
    pytester.makepyfile(test_plain=RECORD_ENVIRONMENT)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    assert (pytester.path / "seen.txt").read_text() == "unset"
    assert "tf.keras is" not in result.stdout.str()


def test_tensorflow_imported_before_the_plugin_could_choose(lrp_project, pytester, fresh_process):
    # A user's conftest that imports TensorFlow at the top, before any collection.
    pytester.makeconftest("import tensorflow\n")
    lrp_project.rules(RULES)
    result = pytester.runpytest_subprocess(
        f"--lrp-model={lrp_project.nobias.path}", f"--lrp-inputs={lrp_project.inputs}"
    )
    if not at_least_2_16():
        result.assert_outcomes(passed=1)  # tf.keras is Keras 2 however TensorFlow was imported
        return
    # An environment that cannot run innvestigate: one usage error for the run (tests/test_one_message.py).
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert importlib.metadata.version("keras").startswith("3.")
    result.stderr.fnmatch_lines(
        [
            "ERROR: TensorFlow * was imported with tf.keras = Keras 3 before pytest-lrp could set TF_USE_LEGACY_KERAS=1*",
        ]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_a_users_own_setting_is_kept(monkeypatch):
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "0")
    monkeypatch.setattr(tf_runtime, "_set_by_us", [])
    monkeypatch.delitem(sys.modules, "tensorflow")  # as if not imported yet; restored afterwards
    tf_runtime.choose_legacy_keras()
    assert tf_runtime.os.environ["TF_USE_LEGACY_KERAS"] == "0"
    problem = tf_runtime.keras_3_problem()
    if tf_runtime.at_least_2_16():
        assert problem.startswith("TF_USE_LEGACY_KERAS=0 in the environment makes tf.keras Keras 3")
    else:
        assert problem is None


def test_installed_versions_satisfy_the_declared_dependencies():
    """pyproject.toml's per-Python dependencies describe the environment the suite runs in."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    applicable = [Requirement(text) for text in pyproject["project"]["dependencies"]]
    applicable = [r for r in applicable if r.marker is None or r.marker.evaluate()]
    names = {r.name.lower().replace("_", "-") for r in applicable}
    if sys.version_info >= (3, 12):
        assert {"tensorflow", "tf-keras"} <= names and "innvestigate" not in names
    else:
        assert {"tensorflow", "innvestigate", "numpy"} <= names
    for requirement in applicable:
        installed = importlib.metadata.version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), (
            f"{requirement} but {installed} is installed"
        )
    assert importlib.metadata.version("innvestigate") == "2.1.2"  # installed without its pins from Python 3.12 on
