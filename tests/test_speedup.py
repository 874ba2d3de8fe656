"""engine/speedup.py: the faster analyzer build changes no heatmap value and leaks nothing into the process.

The expected heatmaps come from innvestigate run the usual way, in this process: the model
file loaded in a graph of its own, Keras' normal path (no switch, learning phase placeholder).
Times are in bench/ (python bench/run.py --only deep), never asserted here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers.residual_cnn import residual_cnn

from pytest_lrp.base.tf_runtime import keras_package
from pytest_lrp.engine import speedup, upstream_fixes

FAMILIES = {  # id -> (analyzer, params): one rule of every family the default suite uses
    "z": ("lrp.z", {}),
    "epsilon": ("lrp.epsilon", {"epsilon": 0.1}),
    "w-square": ("lrp.w_square", {}),
    "flat": ("lrp.flat", {}),
    "alpha2-beta1": ("lrp.alpha_2_beta_1", {}),
    "alpha1-beta0-ib": ("lrp.alpha_1_beta_0_IB", {}),
    "z-plus": ("lrp.z_plus", {}),
    "preset-a": ("lrp.sequential_preset_a", {}),
    "preset-b-flat": ("lrp.sequential_preset_b_flat", {}),
    "deep-taylor": ("deep_taylor", {}),
    "deep-taylor-bounded": ("deep_taylor.bounded", {"low": 0.0, "high": 1.0}),
    "input-t-gradient": ("input_t_gradient", {}),
    "integrated-gradients": ("integrated_gradients", {"steps": 4}),
}

# On the deeper model innvestigate's usual build is what is slow (quadratic in depth): one rule per code path of
# innvestigate (LRP rule, alpha-beta, Deep Taylor, gradient, wrapper); MobileNetV2 with six rules is compared in bench/.
DEEP_FAMILIES = ("z", "alpha2-beta1", "deep-taylor", "input-t-gradient", "integrated-gradients")


def save_families(families) -> str:
    return "\n".join(
        ["import numpy as np", "import pytest", ""]
        + [
            f"@pytest.mark.lrp_rule({analyzer!r}, disable_model_checks=True, **{params!r})\n"
            f"def test_{rule_id.replace('-', '_')}(lrp_analysis):\n"
            f"    np.save({rule_id + '.npy'!r}, lrp_analysis.heatmaps)\n"
            for rule_id, (analyzer, params) in FAMILIES.items()
            if rule_id in families
        ]
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory, tensorflow_imported_once):
    """name -> (path, x): a small and a deep-ish residual CNN (explicit names), the small one with Keras' default names."""
    tf = tensorflow_imported_once
    folder = tmp_path_factory.mktemp("speedup")
    built = {}
    for key, blocks, named in (("small", 1, True), ("deep", 3, True), ("default_names", 2, False)):
        model, names, graph = residual_cnn(tf, blocks, named)
        path = folder / f"{key}.h5"
        with graph.as_default():
            model.save(path, include_optimizer=False)
        x = np.random.default_rng(7).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
        np.savez(folder / f"{key}.npz", x=x)
        built[key] = (path, folder / f"{key}.npz", names)
    return built


def innvestigate_the_usual_way(tf, model_path: Path, x: np.ndarray, families) -> dict:
    import innvestigate

    heatmaps = {}
    for rule_id in families:
        analyzer, params = FAMILIES[rule_id]
        with tf.Graph().as_default(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if analyzer == "integrated_gradients":
                # The usual way crashes here on any model with BatchNormalization (innvestigate 2.1.2, Keras 2.14:
                # "Cannot convert ... dtype([('resource', 'u1')])" calling the model on its reference inputs);
                # the nearest that runs fixes this graph's learning phase to inference, as speedup.py does.
                tf.keras.backend.set_learning_phase(0)
            model = innvestigate.model_wo_softmax(tf.keras.models.load_model(str(model_path), compile=False))
            heatmaps[rule_id] = innvestigate.create_analyzer(
                analyzer, model, disable_model_checks=True, **params
            ).analyze(x)
    return heatmaps


@pytest.mark.slow
@pytest.mark.parametrize("key, families", [("small", tuple(FAMILIES)), ("deep", DEEP_FAMILIES)], ids=["small", "deep"])
def test_heatmaps_are_bitwise_those_of_innvestigate_run_the_usual_way(
    key, families, models, pytester, tensorflow_imported_once
):
    path, inputs, _ = models[key]
    pytester.makepyfile(test_save=save_families(families))
    result = pytester.runpytest(f"--lrp-model={path}", f"--lrp-inputs={inputs}", "--lrp-samples=2")
    result.assert_outcomes(passed=len(families))
    expected = innvestigate_the_usual_way(tensorflow_imported_once, path, np.load(inputs)["x"], families)
    for rule_id in families:
        got = np.load(pytester.path / f"{rule_id}.npy")
        assert np.abs(got).sum() > 0, rule_id
        np.testing.assert_array_equal(got, expected[rule_id], err_msg=rule_id)  # a single changed value fails


def _switch(tf):
    from importlib import import_module

    return import_module(f"{keras_package(tf)}.src.engine.base_layer_utils")


def _process_state(tf):
    import innvestigate

    return (
        getattr(_switch(tf), speedup.SWITCH),
        innvestigate.analyzer.base.AnalyzerBase.__dict__["_do_model_checks"],
        innvestigate.backend.graph.get_layer_from_config,
        tf.keras.backend.learning_phase(),
        tf.executing_eagerly(),
    )


def test_the_switch_and_the_model_check_patch_are_undone_when_the_build_raises(tensorflow_imported_once):
    import innvestigate

    tf = tensorflow_imported_once
    before = _process_state(tf)
    assert before[0] is False  # Keras' default
    with pytest.raises(RuntimeError, match="build failed"):
        with speedup.analyzer_build(tf, innvestigate):
            assert getattr(_switch(tf), speedup.SWITCH) is True
            assert innvestigate.analyzer.base.AnalyzerBase._do_model_checks.__module__ == upstream_fixes.__name__
            assert innvestigate.backend.graph.get_layer_from_config.__module__ == speedup.__name__
            raise RuntimeError("build failed")
    assert _process_state(tf) == before


def test_nothing_leaks_into_the_process_after_analyses_that_pass_and_crash(models, pytester, tensorflow_imported_once):
    tf = tensorflow_imported_once
    before = _process_state(tf)
    path, inputs, _ = models["small"]
    pytester.makepyfile(
        test_two="""
        import pytest

        @pytest.mark.lrp_rule("lrp.z", disable_model_checks=True)
        def test_runs(lrp_analysis):
            assert lrp_analysis.finite

        @pytest.mark.lrp_rule("deep_taylor.bounded", disable_model_checks=True)  # low and high missing: the build raises
        def test_crashes(lrp_analysis):
            pass
    """
    )
    result = pytester.runpytest(f"--lrp-model={path}", f"--lrp-inputs={inputs}", "--lrp-samples=2")
    result.assert_outcomes(passed=1, errors=1)
    assert _process_state(tf) == before
    # A user's own Keras model built afterwards in eager mode gets the usual names and behaviour.
    layer = tf.keras.layers.Dropout(0.5)
    ones = np.ones((1, 100), np.float32)
    assert np.array_equal(layer(ones, training=False).numpy(), ones)


ONE_ANALYSIS = """
    import pytest

    @pytest.mark.lrp_rule("lrp.alpha_2_beta_1", disable_model_checks=True)
    def test_runs(lrp_analysis):
        assert lrp_analysis.finite
"""


def test_without_the_switch_analyses_still_run_and_the_header_says_so(
    models, pytester, monkeypatch, tmp_path, tensorflow_imported_once
):
    # A Keras without the switch (deleting Keras' own global would break Keras, which reads it).
    monkeypatch.setattr(speedup, "_switch_module", lambda tf: None)
    fake = tmp_path / "keras"  # its source, for the header (which must not import TensorFlow)
    (fake / "src" / "engine").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "src" / "engine" / "base_layer_utils.py").write_text("def create_keras_history(tensors):\n    pass\n")
    monkeypatch.setattr(speedup, "package_origin", lambda name: str(fake / "__init__.py"))
    path, inputs, _ = models["small"]
    pytester.makepyfile(test_one=ONE_ANALYSIS)
    result = pytester.runpytest(f"--lrp-model={path}", f"--lrp-inputs={inputs}", "--lrp-samples=2")
    result.assert_outcomes(passed=1)
    lines = [line for line in result.outlines if "_UNSAFE_GRAPH_OP_LAYER_CREATION" in line]
    assert len(lines) == 1 and "slow" in lines[0], result.outlines[:10]


def test_with_the_switch_the_header_says_nothing_about_it(pytester, models):
    # The same run as above, with the switch. (A test file without LRP tests would run the packaged
    # suite's 21 rules on this model instead, for the same header.)
    path, inputs, _ = models["small"]
    pytester.makepyfile(test_one=ONE_ANALYSIS)
    result = pytester.runpytest(f"--lrp-model={path}", f"--lrp-inputs={inputs}", "--lrp-samples=2")
    result.assert_outcomes(passed=1)
    assert not [line for line in result.outlines if "_UNSAFE_GRAPH_OP_LAYER_CREATION" in line]


def test_the_model_is_rebuilt_with_zero_initial_values_and_then_has_exactly_the_files_weights(
    models, monkeypatch, tensorflow_imported_once
):
    from pytest_lrp.models.modelfile import load_model_file

    tf = tensorflow_imported_once
    path, inputs, _ = models["deep"]
    model = load_model_file(path, "deep")
    config = speedup.rebuild_config(model.config)
    initializers = [value for value in _values_of_keys_ending(config, "_initializer")]
    assert initializers and all(value == {"class_name": "Zeros", "config": {}} for value in initializers)
    assert (
        config["layers"][1]["config"]["kernel_initializer"] != model.config["layers"][1]["config"]["kernel_initializer"]
    )
    x = np.load(inputs)["x"]
    outputs = {}
    for speed_up in ("1", "0"):
        monkeypatch.setenv(speedup.ENABLED_VARIABLE, speed_up)
        with tf.Graph().as_default(), tf.compat.v1.Session():
            rebuilt = model.rebuild(speedup.rebuild_config(model.config))
            assert all(np.array_equal(a, b) for a, b in zip(rebuilt.get_weights(), model.weights))
            outputs[speed_up] = rebuilt.predict(x, verbose=0)
    assert speedup.rebuild_config(model.config) is model.config  # the speed-up off: Keras' usual path
    np.testing.assert_array_equal(outputs["1"], outputs["0"])


def _values_of_keys_ending(config, suffix):
    if isinstance(config, dict):
        for key, value in config.items():
            if key.endswith(suffix):
                yield value
            else:
                yield from _values_of_keys_ending(value, suffix)
    elif isinstance(config, list):
        for value in config:
            yield from _values_of_keys_ending(value, suffix)


def test_variables_a_layer_copy_built_and_then_swapped_for_the_originals_never_get_memory(tensorflow_imported_once):
    import innvestigate

    tf = tensorflow_imported_once
    with tf.Graph().as_default(), tf.compat.v1.Session() as session, speedup.analyzer_build(tf, innvestigate):
        dense = tf.keras.layers.Dense(3, name="original")
        dense(tf.keras.Input((4,)))
        dense.set_weights([np.arange(12, dtype=np.float32).reshape(4, 3), np.ones(3, np.float32)])
        before = {id(v) for v in tf.compat.v1.global_variables()}
        # innvestigate's copies: the original's variables (the default), or its values in variables of the copy's own
        shared = innvestigate.backend.graph.get_layer_from_config(dense, dense.get_config())
        orphans = [v for v in tf.compat.v1.global_variables() if id(v) not in before]
        valued = innvestigate.backend.graph.get_layer_from_config(
            dense, dense.get_config(), weights=dense.get_weights()
        )
        tf.compat.v1.keras.backend.get_session()  # where Keras initializes the variables it tracks
        assert [id(w) for w in shared.weights] == [id(w) for w in dense.weights]
        assert len(orphans) == 2 and not any(session.run([tf.compat.v1.is_variable_initialized(v) for v in orphans]))
        assert all(session.run([tf.compat.v1.is_variable_initialized(v) for v in valued.weights]))
        assert all(np.array_equal(a, b) for a, b in zip(valued.get_weights(), dense.get_weights()))
