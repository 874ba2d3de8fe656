"""Model formats, the graph-mode weights check, and what the plugin leaves untouched."""

from __future__ import annotations

import numpy as np

SAVE_HEATMAPS = """
    import numpy as np
    import pytest

    @pytest.mark.lrp_rule("lrp.alpha_2_beta_1")
    def test_save(lrp_model, lrp_analysis):
        np.save(f"heatmaps-{lrp_model.path.suffix or 'savedmodel'}.npy", lrp_analysis.heatmaps)
"""


def test_h5_keras_and_savedmodel_give_the_same_heatmaps(lrp_project, pytester):
    pytester.makepyfile(test_formats=SAVE_HEATMAPS)
    paths = lrp_project.biased.paths
    # --lrp-trust-model: a SavedModel folder is refused without it (see test_hardening.py).
    result = pytester.runpytest(
        *[f"--lrp-model={p}" for p in paths.values()], f"--lrp-inputs={lrp_project.inputs}", "--lrp-trust-model", "-v"
    )
    result.assert_outcomes(passed=3)
    h5, keras, savedmodel = (
        np.load(pytester.path / f"heatmaps-{suffix}.npy") for suffix in (".h5", ".keras", "savedmodel")
    )
    assert np.abs(h5).sum() > 0
    np.testing.assert_allclose(keras, h5, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(savedmodel, h5, rtol=1e-6, atol=1e-7)


def test_a_rebuilt_model_with_other_weights_is_refused(lrp_project, pytester):
    # Simulates the graph-mode trap: the copy that gets analyzed has fresh weights.
    # (restored at unconfigure: the inner run shares this process's modules)
    pytester.makeconftest("""
        from pytest_lrp.models import modelfile

        original = modelfile.ModelFile.rebuild

        def rebuild_without_weights(self, config=None):  # the faulty copy ignores the config to build from, too
            keras = modelfile.tensorflow().keras
            return keras.Sequential.from_config(self.config)

        def pytest_configure():
            modelfile.ModelFile.rebuild = rebuild_without_weights

        def pytest_unconfigure():
            modelfile.ModelFile.rebuild = original
    """)
    (pytester.path / "rules.yaml").write_text("rules:\n  - {id: z, analyzer: lrp.z}\n")
    result = pytester.runpytest(f"--lrp-model={lrp_project.biased.path}", "rules.yaml", "-k", "conservation")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*biased.h5: the copy of the model rebuilt for analysis predicts differently from the file loaded normally "
            "(max difference *); refusing to explain a model with other weights"
        ]
    )


def test_rebuilt_model_is_checked_on_every_analysis(lrp_project, pytester, monkeypatch):
    from pytest_lrp.models import modelfile

    calls = []
    original = modelfile.ModelFile.check_same_outputs
    monkeypatch.setattr(
        modelfile.ModelFile, "check_same_outputs", lambda self, *a: calls.append(1) or original(self, *a)
    )
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: z, analyzer: lrp.z}\n  - {id: flat, analyzer: lrp.flat}\n"
    )
    # conservation and finite for two rules: four tests, two analyses
    pytester.runpytest(f"--lrp-model={lrp_project.nobias.path}", "rules.yaml").assert_outcomes(passed=4)
    assert len(calls) == 2


def test_eager_tensorflow_tests_still_work_after_the_analyses(lrp_project, pytester):
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: z, analyzer: lrp.z}\n  - {id: w, analyzer: lrp.w_square}\n"
    )
    pytester.makepyfile(
        test_user_eager="""
        import numpy as np
        import tensorflow as tf

        def test_eager_still_on():
            assert tf.executing_eagerly()
            value = tf.constant([1.0, 2.0]) * 3
            assert np.allclose(value.numpy(), [3.0, 6.0])

        def test_keras_fit_in_eager_mode():
            model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))])
            model.compile(loss="mse", optimizer="sgd")
            model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=1, verbose=0)
            assert model.predict(np.ones((1, 2)), verbose=0).shape == (1, 1)
    """
    )
    result = pytester.runpytest(
        f"--lrp-model={lrp_project.nobias.path}",
        "rules.yaml",
        "test_user_eager.py",
        "-v",
        "-k",
        "conservation or eager",
    )
    result.assert_outcomes(passed=4)
    lines = result.stdout.str().splitlines()
    order = [i for i, line in enumerate(lines) if "PASSED" in line]
    assert "rules.yaml" in lines[order[0]] and "test_user_eager" in lines[order[-1]]


def test_unrelated_run_does_not_import_tensorflow(pytester):
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    pytester.makeconftest(
        "import sys\n"
        "def pytest_sessionfinish():\n"
        "    heavy = [m for m in ('tensorflow', 'innvestigate', 'keras') if m in sys.modules]\n"
        "    print('HEAVY-IMPORTS:', heavy)\n"
    )
    result = pytester.runpytest_subprocess("-s", "-p", "lrp")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["plugins:*lrp-0.1.0*", "*HEAVY-IMPORTS: []*"], consecutive=False)


def test_plugin_is_registered_as_lrp_and_can_be_disabled(lrp_project, pytester):
    (pytester.path / "rules.yaml").write_text("rules:\n  - {id: z, analyzer: lrp.z}\n")
    enabled = pytester.runpytest("rules.yaml", f"--lrp-model={lrp_project.nobias.path}", "--co", "-q")
    enabled.stdout.fnmatch_lines(["rules.yaml::conservation[[]nobias-z[]]"])
    disabled = pytester.runpytest("-p", "no:lrp", "rules.yaml", "--co", "-q")
    assert disabled.ret != 0
    assert "conservation[" not in disabled.stdout.str()


def test_layers_innvestigate_adds_do_not_clash_with_the_models_names(pytester, tensorflow_imported_once):
    # A functional model saved in a fresh session has an input called 'input_1'. Rebuilt in a
    # new graph, Keras' automatic numbering starts again, and integrated gradients' reference
    # input would be called 'input_1' too: "The name "input_1" is used 2 times in the model"
    # (found on VGG16). The names 'dense' and 'dense_1' are Keras' zero-based defaults.
    tf = tensorflow_imported_once
    layers = tf.keras.layers
    x = layers.Input(shape=(4,), name="input_1")
    hidden = layers.Dense(6, activation="relu", use_bias=False, name="dense")(x)
    out = layers.Dense(2, use_bias=False, name="dense_1")(hidden)
    tf.keras.Model(x, out).save(pytester.path / "functional.h5")
    (pytester.path / "rules.yaml").write_text(
        "rules:\n"
        "  - {id: ig, analyzer: integrated_gradients, params: {steps: 64, reference_inputs: 0.0}, target: output_minus_reference,"
        " tolerance: {rtol: 0.05}}\n"
        "  - {id: z, analyzer: lrp.z}\n"
    )
    result = pytester.runpytest("rules.yaml", "--lrp-model=functional.h5", "-k", "conservation")
    result.assert_outcomes(passed=2)
