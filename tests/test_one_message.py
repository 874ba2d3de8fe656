"""One problem, one message (issue 19, point 6): a model that does not load, inputs that do not fit it, or an
environment that cannot run innvestigate stop the run with one line (a usage error, exit 4), once, before any
test runs, instead of the same error on every generated test (106 with the packaged suite)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest


def _error_lines(result) -> list:
    return [line for line in result.outlines + result.errlines if line.startswith("ERROR:")]


def test_the_packaged_suite_on_a_missing_model_stops_with_one_line(pytester):
    result = pytester.runpytest("--lrp-model=missing.h5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.assert_outcomes()
    assert _error_lines(result) == [
        "ERROR: missing.h5: model file not found (the model: fix or replace the file named by --lrp-model, the ini key "
        "lrp_model or the rule file's defaults.models; no LRP test ran)"
    ]


def test_the_packaged_suite_on_a_corrupt_model_file_stops_with_one_line(pytester):
    (pytester.path / "corrupt.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # an HDF5 signature, then nothing
    result = pytester.runpytest("--lrp-model=corrupt.h5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.assert_outcomes()
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("ERROR: corrupt.h5: ") and "(the model: " in lines[0], lines


def test_the_packaged_suite_on_inputs_of_another_shape_stops_with_one_line(lrp_project, pytester):
    np.savez(pytester.path / "wrong.npz", x=np.ones((4, 3), np.float32))
    result = pytester.runpytest(f"--lrp-model={lrp_project.nobias.path}", "--lrp-inputs=wrong.npz")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.assert_outcomes()
    assert _error_lines(result) == [
        "ERROR: wrong.npz: inputs of shape (4, 3) do not fit the model's input shape (N, 5) (the inputs: give inputs of "
        "the model's input shape with --lrp-inputs, the ini key lrp_inputs or the rule file's defaults.inputs "
        "(or none: seeded random inputs); no LRP test ran)"
    ]


def test_a_hand_written_test_of_a_missing_model_stops_the_run_too(pytester):
    pytester.makepyfile(test_own="def test_own(lrp_model):\n    pass\n\ndef test_plain():\n    pass\n")
    result = pytester.runpytest("--lrp-model=missing.h5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert len(_error_lines(result)) == 1


def test_deselected_lrp_tests_load_nothing(pytester):
    pytester.makepyfile(test_own="def test_own(lrp_model):\n    pass\n\ndef test_plain():\n    pass\n")
    result = pytester.runpytest("--lrp-model=missing.h5", "-k", "plain")
    result.assert_outcomes(passed=1, deselected=1)


@pytest.mark.xdist
def test_under_xdist_the_lrp_tests_are_one_error_with_the_line(pytester):
    # A worker cannot stop the run (a usage error there is an INTERNALERROR of the controller): its LRP tests
    # become one test erroring with the line; other tests still run.
    pytest.importorskip("xdist")
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = pytester.runpytest("--lrp-model=missing.h5", "-n", "2")
    result.assert_outcomes(passed=1, errors=1)
    text = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in text
    assert text.count("missing.h5: model file not found (the model: ") == 2  # the error and its summary line
    result.stdout.fnmatch_lines(
        ["*ERROR at setup of lrp: no LRP test can run*", "*", "missing.h5: model file not found (the model: *"]
    )


def test_an_environment_without_innvestigate_stops_with_one_line(lrp_project, pytester, monkeypatch):
    # A separate process whose `import innvestigate` fails, as where it is not installed.
    broken = pytester.mkdir("site")
    (broken / "innvestigate").mkdir()
    (broken / "innvestigate" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'innvestigate'\")\n"
    )
    project_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(broken), project_root, *filter(None, [os.environ.get("PYTHONPATH")])])
    )
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: z, analyzer: lrp.z}\n  - {id: eps, analyzer: lrp.epsilon}\n"
    )
    result = pytester.run(
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "rules.yaml",
        f"--lrp-model={lrp_project.nobias.path}",
        timeout=300,
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert _error_lines(result) == [
        "ERROR: this Python environment cannot run innvestigate (ModuleNotFoundError: No module named 'innvestigate'); "
        "pytest-lrp needs innvestigate 2.1.2 with TensorFlow's Keras 2: install it in this environment "
        "(pip install innvestigate==2.1.2), or deselect the LRP tests (-m 'not lrp'); no LRP test ran"
    ]


def test_models_loaded_before_the_first_analysis_still_predict_afterwards(lrp_project, pytester):
    # The check loads every model before any analysis; building a model in an analysis graph invalidates Keras
    # models loaded eagerly before ("Your Layer or Model is in an invalid state"). ModelFile.predict then uses a
    # copy rebuilt in a graph of its own.
    pytester.makepyfile(
        test_after="""
        import numpy as np
        import pytest

        @pytest.mark.lrp_rule("lrp.z")
        def test_analysis(lrp_model, lrp_analysis):
            pass

        def test_predict_afterwards(lrp_model):
            np.save(f"after{lrp_model.path.suffix}.npy", lrp_model.predict(np.ones((2, 5), np.float32)))
    """
    )
    paths = lrp_project.biased.paths
    result = pytester.runpytest(
        f"--lrp-model={paths['.h5']}", f"--lrp-model={paths['.keras']}", f"--lrp-inputs={lrp_project.inputs}"
    )
    result.assert_outcomes(passed=4)
    expected = lrp_project.biased.outputs(np.ones((2, 5)))
    expected = np.exp(expected) / np.exp(expected).sum(axis=1, keepdims=True)  # the file's softmax
    for suffix in (".h5", ".keras"):
        np.testing.assert_allclose(np.load(pytester.path / f"after{suffix}.npy"), expected, rtol=1e-5, err_msg=suffix)


@pytest.mark.xdist
def test_under_xdist_a_worker_that_cannot_import_innvestigate_keeps_the_collection(lrp_project, pytester):
    # The environment is a property of each worker (a worker's conftest may import Keras 3): the workers must collect
    # the same tests, so such a worker's LRP tests stay and error one by one, as before; the others run.
    pytest.importorskip("xdist")
    pytester.makeconftest(
        "import os, sys\nif os.environ.get('PYTEST_XDIST_WORKER') == 'gw1':\n    sys.modules['innvestigate'] = None\n"
    )
    lrp_project.rules("rules:\n  - {id: z, analyzer: lrp.z}\n  - {id: flat, analyzer: lrp.flat}\n")
    result = pytester.runpytest(
        "rules.yaml",
        f"--lrp-model={lrp_project.nobias.path}",
        f"--lrp-inputs={lrp_project.inputs}",
        "-k",
        "conservation",
        "-n",
        "2",
    )
    text = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in text and "Different tests were collected" not in text
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("errors", 0) + outcomes.get("error", 0) == 2, outcomes
