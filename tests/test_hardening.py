"""Bad models and inputs, untrusted models and crashing analyzers: one clear line each, and the run goes on.

Every case runs pytest on real files (Keras models saved to disk, .npy inputs) and
asserts the exact line the user sees. Broken rule files are in test_rule_file_errors.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

# --- models: one line, as the error of each test of that model; nothing from the file runs ----------


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, tensorflow_imported_once):
    """Real Keras files, each wrong in one way; the Lambda writes a marker file when it runs."""
    tf = tensorflow_imported_once
    layers = tf.keras.layers
    folder = tmp_path_factory.mktemp("bad_models")
    marker = folder / "LAMBDA-RAN"
    # eval: the marker path becomes a constant of the lambda's own code, as an attacker's payload would be.
    payload = eval(f"lambda x: (open({str(marker)!r}, 'w').write('ran'), x)[1]")

    class Doubler(layers.Layer):
        def call(self, x):
            return 2 * x

    def dense(*middle, first="relu"):
        return tf.keras.Sequential([layers.Dense(4, activation=first, input_shape=(5,)), *middle, layers.Dense(3)])

    two = [tf.keras.Input((5,)), tf.keras.Input((5,))]
    models = {
        "lambda.h5": dense(layers.Lambda(payload)),
        "lambda.keras": dense(layers.Lambda(payload)),
        "custom.h5": dense(Doubler()),
        "tanh.h5": dense(first="tanh"),
        "inner_softmax.h5": dense(first="softmax"),
        "two_inputs.h5": tf.keras.Model(two, layers.Dense(3)(layers.Concatenate()(two))),
    }
    for name, model in models.items():
        model.save(folder / name)
    marker.unlink()  # building the model above ran the lambda once
    (folder / "text.h5").write_text("not a model\n")
    return folder


MODEL_CASES = {
    "missing": ("nothere.h5", "*nothere.h5: model file not found"),
    "not-a-model": (
        "text.h5",
        "*text.h5: not a Keras model file (expected an HDF5 .h5/.hdf5 file, a .keras archive or a SavedModel folder)",
    ),
    "lambda-h5": (
        "lambda.h5",
        "*lambda.h5: layer 'lambda' is a Lambda layer, whose Python code is stored in the file and runs when the model is "
        "loaded; refused unless you trust the file (--lrp-trust-model, ini lrp_trust_model)",
    ),
    "lambda-keras": (
        "lambda.keras",
        "*lambda.keras: layer 'lambda_1' is a Lambda layer, whose Python code is stored in the file and runs when the model is "
        "loaded; refused unless you trust the file (--lrp-trust-model, ini lrp_trust_model)",
    ),
    "custom-layer": (
        "custom.h5",
        "*custom.h5: layer 'doubler' has class 'Doubler', which is not a built-in Keras layer (loading it runs code from "
        "outside Keras); refused unless you trust the file (--lrp-trust-model, ini lrp_trust_model)",
    ),
    "two-inputs": (
        "two_inputs.h5",
        "*two_inputs.h5: the model has 2 inputs and 1 outputs; pytest-lrp supports models with one input and one output",
    ),
    "softmax-inside": (
        "inner_softmax.h5",
        "*inner_softmax.h5: layer 'dense_*' applies a softmax inside the network; relevance cannot be propagated through it "
        "(only a softmax on the last layer is supported, and it is stripped)",
    ),
}
MODEL_HINT = (
    " (the model: fix or replace the file named by --lrp-model, the ini key lrp_model or the rule file's "
    "defaults.models; no LRP test ran)"
)


@pytest.mark.parametrize("model, line", MODEL_CASES.values(), ids=MODEL_CASES.keys())
def test_a_model_that_does_not_load_stops_the_run_with_one_line(pytester, bad_models, model, line):
    # One problem, one message (issue 19): not the same error on every test of the model.
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: dt, analyzer: deep_taylor}\n  - {id: z, analyzer: lrp.z}\n"
    )
    result = pytester.runpytest("rules.yaml", f"--lrp-model={bad_models / model}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.assert_outcomes()
    result.stderr.fnmatch_lines(["ERROR: " + line + MODEL_HINT.replace("[", "[[]")])
    assert len([text for text in result.stderr.lines if text.startswith("ERROR:")]) == 1
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert not (bad_models / "LAMBDA-RAN").exists()


def test_a_model_innvestigate_cannot_analyze_is_its_tests_error_in_one_line(pytester, bad_models):
    # The model loads; one analyzer refuses it: that rule's tests error, the other rules run.
    (pytester.path / "rules.yaml").write_text("rules:\n  - {id: dt, analyzer: deep_taylor}\n")
    result = pytester.runpytest("rules.yaml", f"--lrp-model={bad_models / 'tanh.h5'}", "-k", "conservation")
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*tanh.h5: innvestigate cannot analyze this model with deep_taylor (rule 'dt'): "
            "This DeepTaylor implementation only supports ReLU activations."
        ]
    )
    assert "Traceback" not in result.stdout.str() and "site-packages" not in result.stdout.str()


def test_trusted_lambda_model_is_loaded_and_innvestigate_says_why_it_cannot_analyze_it(pytester, bad_models):
    (pytester.path / "rules.yaml").write_text("rules:\n  - {id: z, analyzer: lrp.z}\n")
    pytester.makeini("[pytest]\nlrp_trust_model = true\n")
    try:
        result = pytester.runpytest("rules.yaml", f"--lrp-model={bad_models / 'lambda.h5'}", "-k", "conservation")
        assert (bad_models / "LAMBDA-RAN").exists()  # the opt-in really lifts the refusal
    finally:
        (bad_models / "LAMBDA-RAN").unlink(missing_ok=True)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*lambda.h5: innvestigate cannot analyze this model with lrp.z (rule 'z'): "
            "Lambda layers are not allowed. To force use set 'allow_lambda_layers' parameter."
        ]
    )


def test_savedmodel_folder_needs_trust(lrp_project, pytester):
    folder = lrp_project.biased.paths[""]
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: z, analyzer: lrp.z, xfail: the bias absorbs relevance}\n"
    )
    refused = pytester.runpytest("rules.yaml", f"--lrp-model={folder}", "-k", "conservation")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR  # once for the run (tests/test_one_message.py)
    refused.stderr.fnmatch_lines(
        [
            "ERROR: *biased_savedmodel: a SavedModel folder holds TensorFlow graphs that run as stored and cannot be checked before "
            "loading; refused unless you trust the file (--lrp-trust-model, ini lrp_trust_model), or save the model as .keras or .h5 (the model: *"
        ]
    )
    trusted = pytester.runpytest("rules.yaml", f"--lrp-model={folder}", "--lrp-trust-model", "-k", "conservation")
    trusted.assert_outcomes(xfailed=1)


def test_model_without_softmax_is_fine(lrp_project, pytester, tensorflow_imported_once):
    tf = tensorflow_imported_once
    model = tf.keras.Sequential(
        [
            tf.keras.layers.Dense(4, activation="relu", use_bias=False, input_shape=(5,)),
            tf.keras.layers.Dense(3, use_bias=False),
        ]
    )
    model.save(pytester.path / "plain.h5")
    (pytester.path / "rules.yaml").write_text("rules:\n  - {id: w, analyzer: lrp.w_square}\n")
    result = pytester.runpytest("rules.yaml", "--lrp-model=plain.h5", "-k", "conservation")
    result.assert_outcomes(passed=1)


# --- inputs ---------------------------------------------------------------------------------


def _nan_in_second_sample():
    x = np.ones((4, 5), dtype=np.float32)
    x[1, 2] = np.nan
    return x


INPUT_CASES = {
    "missing": (None, [], "nothere.npy: inputs file not found"),
    "shape": (
        np.ones((4, 3), np.float32),
        [],
        "inputs.npy: inputs of shape (4, 3) do not fit the model's input shape (N, 5)",
    ),
    "nan": (_nan_in_second_sample(), [], "inputs.npy: 1 of 4 samples contain NaN or Inf"),
    "inf": (np.full((2, 5), np.inf, np.float32), [], "inputs.npy: 2 of 2 samples contain NaN or Inf"),
    "zero-samples": (np.ones((0, 5), np.float32), [], "inputs.npy: holds no samples (shape (0, 5))"),
    "beyond-the-file": (
        np.ones((6, 5), np.float32),
        ["--lrp-samples=10"],
        "inputs.npy: 10 samples asked for, but the file holds 6",
    ),
}


@pytest.mark.parametrize("array, flags, line", INPUT_CASES.values(), ids=INPUT_CASES.keys())
def test_bad_inputs_stop_the_run_with_one_line(lrp_project, pytester, array, flags, line):
    name = "nothere.npy" if array is None else "inputs.npy"
    if array is not None:
        np.save(pytester.path / name, array)
    (pytester.path / "rules.yaml").write_text("rules:\n  - {id: z, analyzer: lrp.z}\n")
    result = pytester.runpytest("rules.yaml", f"--lrp-model={lrp_project.nobias.path}", f"--lrp-inputs={name}", *flags)
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # once for the run, not once per test
    result.assert_outcomes()
    result.stderr.fnmatch_lines(
        [f"ERROR: {line} (the inputs: give inputs of the model's input shape with --lrp-inputs*; no LRP test ran)"]
    )


def test_zero_target_is_judged_by_atol_alone(lrp_project, pytester):
    # Zero inputs to a bias-free net: every output and every relevance is exactly 0.
    np.save(pytester.path / "zeros.npy", np.zeros((3, 5), np.float32))
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: z, analyzer: lrp.z, tolerance: {rtol: 0.0, atol: 0.0}}\n"
    )
    result = pytester.runpytest(
        "rules.yaml",
        f"--lrp-model={lrp_project.nobias.path}",
        "--lrp-inputs=zeros.npy",
        "-k",
        "conservation",
        "-W",
        "error::RuntimeWarning",
    )
    result.assert_outcomes(passed=1)


def test_zero_target_failure_shows_no_percentage(lrp_project, pytester):
    # Inputs where the chosen output is negative: max(f, 0) = 0 while the relevance sums to f.
    x = np.random.default_rng(3).uniform(0, 1, (64, 5)).astype(np.float32)
    outputs = lrp_project.nobias.outputs(x)
    neuron = int(np.argmax((outputs < -0.05).sum(axis=0)))
    negative = x[outputs[:, neuron] < -0.05][:2]
    assert len(negative) == 2
    np.save(pytester.path / "negative.npy", negative)
    rule = "{id: %s, analyzer: lrp.epsilon, params: {bias: false}, target: positive_output, neuron_selection: %d, tolerance: %s}"
    (pytester.path / "rules.yaml").write_text(
        "rules:\n"
        f"  - {rule % ('strict', neuron, '{rtol: 1.0, atol: 0.0}')}\n"
        f"  - {rule % ('loose', neuron, '{rtol: 0.0, atol: 100.0}')}\n"
    )
    result = pytester.runpytest(
        "rules.yaml",
        f"--lrp-model={lrp_project.nobias.path}",
        "--lrp-inputs=negative.npy",
        "-k",
        "conservation",
        "-W",
        "error::RuntimeWarning",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            f"worst sample *: sum(R) = -*, target max(f(x)[[]{neuron}[]], 0), softmax stripped = 0, error = *, "
            "tolerance = 0 (atol 0 + rtol 1 * |target|); float32 rounding of its terms: *"
        ]
    )
    assert "% of |target|" not in result.stdout.str()


# --- crashes: that test is an error of one line, the others (and the user's eager TF tests) still run ----

EAGER_TEST = """
    import numpy as np
    import tensorflow as tf

    def test_eager_after_a_crash():
        assert tf.executing_eagerly()
        assert np.allclose((tf.constant([1.0, 2.0]) * 3).numpy(), [3.0, 6.0])
"""
ALPHA_BETA_LINE = (
    "lrp.alpha_beta crashed (rule 'ab' on *nobias.h5): ValueError: Constructor call to LRPAlphaBeta : Condition alpha - "
    "beta = 1 not fulfilled. alpha=1 ; beta=5 -> alpha - beta = -4 [[]-vv or --fulltrace shows the traceback[]]"
)


def _crashing_suite(pytester):
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: ab, analyzer: lrp.alpha_beta, params: {alpha: 1, beta: 5}}\n  - {id: w, analyzer: lrp.w_square}\n"
    )
    pytester.makepyfile(test_user_eager=EAGER_TEST)


def test_a_crashing_analyzer_is_an_error_of_its_test_only(lrp_project, pytester):
    _crashing_suite(pytester)
    result = pytester.runpytest(
        "rules.yaml", "test_user_eager.py", f"--lrp-model={lrp_project.nobias.path}", "-k", "conservation or eager"
    )
    result.assert_outcomes(passed=2, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([ALPHA_BETA_LINE])
    assert "relevance_analyzer.py" not in result.stdout.str()  # no frames from inside innvestigate


def test_the_traceback_of_a_crash_comes_back_with_vv(lrp_project, pytester):
    _crashing_suite(pytester)
    result = pytester.runpytest(
        "rules.yaml", f"--lrp-model={lrp_project.nobias.path}", "-k", "conservation and ab", "-vv"
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*relevance_analyzer.py*", "E * ValueError: Constructor call to LRPAlphaBeta*"])


def test_out_of_memory_in_one_rule_is_an_error_of_that_rule_only(lrp_project, pytester):
    # Fault injection at innvestigate's own registry: no real allocation on a shared machine.
    pytester.makeconftest("""
        import innvestigate.analyzer as registry

        original = registry.analyzers["lrp.flat"]
        calls = []

        def out_of_memory(*args, **kwargs):
            calls.append(1)
            raise MemoryError("failed to allocate 1.2 TiB")

        def pytest_configure():
            registry.analyzers["lrp.flat"] = out_of_memory

        def pytest_unconfigure(config):
            registry.analyzers["lrp.flat"] = original
            config.rootpath.joinpath("builds").write_text(str(len(calls)))
    """)
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: flat, analyzer: lrp.flat, checks: [conservation, finite]}\n  - {id: w, analyzer: lrp.w_square}\n"
    )
    pytester.makepyfile(test_user_eager=EAGER_TEST)
    result = pytester.runpytest(
        "rules.yaml",
        "test_user_eager.py",
        f"--lrp-model={lrp_project.nobias.path}",
        "-k",
        "flat or conservation or eager",
        "--lrp-report=report.json",
    )
    result.assert_outcomes(passed=2, errors=2)
    crash = "lrp.flat crashed (rule 'flat' on *nobias.h5): MemoryError: failed to allocate 1.2 TiB [[]-vv or --fulltrace shows the traceback[]]"
    result.stdout.fnmatch_lines([crash, crash])
    assert (
        pytester.path / "builds"
    ).read_text() == "1"  # the second check of the rule reports the crash without rebuilding
    # The run's reports are still complete: the errors in the summary and the JSON, next to the passing rule.
    result.stdout.fnmatch_lines(
        [
            "*= LRP results =*",
            "nobias: 2 rules, 3 tests: 1 passed, 2 errors*",
            "  ERROR  flat           lrp.flat crashed *MemoryError*",
            "  ERROR  flat (finite)  lrp.flat crashed *",
        ]
    )
    report = json.loads((pytester.path / "report.json").read_text())
    by_test = {(r["rule"], r["check"]): r for r in report["results"]}
    assert {key: r["outcome"] for key, r in by_test.items()} == {
        ("flat", "conservation"): "error",
        ("flat", "finite"): "error",
        ("w", "conservation"): "passed",
    }
    assert "MemoryError: failed to allocate 1.2 TiB" in by_test["flat", "conservation"]["message"]
    assert by_test["flat", "conservation"]["max_error"] is None and by_test["w", "conservation"]["max_error"] < 1e-3


def test_a_crash_in_a_hand_written_test_is_that_tests_error(lrp_project, pytester):
    pytester.makepyfile(
        test_mine="""
        import pytest

        @pytest.mark.lrp_rule("lrp.alpha_beta", id="ab", alpha=1, beta=5)
        def test_alpha_beta(lrp_analysis):
            pass

        def test_other():
            pass
    """
    )
    result = pytester.runpytest("test_mine.py", f"--lrp-model={lrp_project.nobias.path}")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([ALPHA_BETA_LINE])


def _raised(action):
    try:
        action()
    except Exception as exc:  # the real exception TensorFlow raises, not a constructed one
        return exc
    raise AssertionError("expected an error")


def test_tensorflow_errors_are_cut_to_what_happened(tensorflow_imported_once):
    from pytest_lrp.engine.crashes import first_line

    tf = tensorflow_imported_once
    eager = _raised(lambda: tf.reshape(tf.zeros(3), (2,)))
    assert first_line(eager) == "Input to reshape is a tensor with 3 values, but the requested shape has 2 [Op:Reshape]"

    def in_graph():
        with tf.Graph().as_default():
            x = tf.compat.v1.placeholder(tf.float32, (None,))
            with tf.compat.v1.Session() as session:
                session.run(tf.reshape(x, (2,)), {x: np.zeros(3)})

    assert (
        first_line(_raised(in_graph))
        == "Input to reshape is a tensor with 3 values, but the requested shape has 2 (node 'Reshape')"
    )
