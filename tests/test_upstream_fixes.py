"""engine/upstream_fixes.py: innvestigate 2.1.2's crashes that are accidents of naming or wrapping (issue 19, point 3).

Each workaround is tested on both sides: innvestigate run the usual way still crashes on the model (so a fixed
innvestigate shows up here), and through pytest-lrp the heatmaps are bitwise those innvestigate computes where it
runs: the same model with its input named otherwise, with Activation('softmax') instead of a Softmax layer, or
with `disable_model_checks=True` set by hand. A layer whose rule the reference does not know is still refused.
"""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from helpers.residual_cnn import residual_cnn

from pytest_lrp.engine import upstream_fixes

CHECK_MESSAGE = "LRP is only tested for convolutional neural networks."


@pytest.fixture(scope="module")
def cnns(tmp_path_factory, tensorflow_imported_once):
    """name -> path: one small ReLU CNN (8x8x1 -> conv -> flatten -> dense(3)) with the same weights, saved with its
    input named 'input_1' or 'pixels', and ending in a Softmax() layer or an Activation('softmax'); inputs 'x.npz'."""
    tf = tensorflow_imported_once
    layers = tf.keras.layers
    folder = tmp_path_factory.mktemp("upstream")
    paths = {}
    for name, input_name, tail in (
        ("input_1", "input_1", None),
        ("pixels", "pixels", None),
        ("softmax_layer", "pixels", layers.Softmax),
        ("softmax_activation", "pixels", lambda: layers.Activation("softmax")),
    ):
        inputs = layers.Input((8, 8, 1), name=input_name)
        x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
        x = layers.Dense(3, name="logits")(layers.Flatten(name="flatten")(x))
        if tail is not None:
            x = tail()(x)
        model = tf.keras.Model(inputs, x)
        rng = np.random.default_rng(5)
        model.set_weights([rng.normal(0.0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
        paths[name] = folder / f"{name}.h5"
        model.save(paths[name], include_optimizer=False)
    np.savez(folder / "x.npz", x=np.random.default_rng(6).uniform(0, 1, (3, 8, 8, 1)).astype(np.float32))
    paths["x"] = folder / "x.npz"
    return paths


@pytest.fixture(scope="module")
def relu_layer_models(tmp_path_factory, tensorflow_imported_once):
    """'residual': Conv-BN-ReLU() blocks with Add (names of its own: innvestigate run directly crashes on Keras' default
    names, "The name "add" is used 2 times"); 'relu6': a CNN with a
    ReLU(max_value=6) layer, whose rule the reference does not implement; inputs 'x.npz' (8x8x3) and 'x1.npz'."""
    tf = tensorflow_imported_once
    layers = tf.keras.layers
    folder = tmp_path_factory.mktemp("relu_layers")
    model, _, graph = residual_cnn(tf, 1, named=True, dropout=False)
    with graph.as_default():
        model.save(folder / "residual.h5", include_optimizer=False)
    inputs = layers.Input((8, 8, 1), name="pixels")
    x = layers.ReLU(max_value=6.0, name="relu6")(layers.Conv2D(4, 3, name="conv")(inputs))
    relu6 = tf.keras.Model(inputs, layers.Dense(3, name="logits")(layers.Flatten(name="flatten")(x)))
    relu6.save(folder / "relu6.h5", include_optimizer=False)
    np.savez(folder / "x.npz", x=np.random.default_rng(7).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32))
    np.savez(folder / "x1.npz", x=np.random.default_rng(7).uniform(0, 1, (2, 8, 8, 1)).astype(np.float32))
    return {
        "residual": folder / "residual.h5",
        "relu6": folder / "relu6.h5",
        "x": folder / "x.npz",
        "x1": folder / "x1.npz",
    }


def usual_way(tf, path, x, analyzer, params, strip=False):
    """innvestigate 2.1.2 run directly on the file, in a graph of its own (as a fresh process would)."""
    import innvestigate

    with tf.Graph().as_default(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tf.keras.models.load_model(str(path), compile=False)
        if strip:
            model = innvestigate.model_wo_softmax(model)
        return innvestigate.create_analyzer(analyzer, model, **params).analyze(x)


def saving_tests(rules: dict, stripped: bool = False) -> str:
    """A test file with one hand-written test per rule id, saving the heatmaps and explained outputs."""
    lines = ["import numpy as np", "import pytest", ""]
    for rule_id, (analyzer, params) in rules.items():
        lines += [
            f"@pytest.mark.lrp_rule({analyzer!r}, **{params!r})",
            f"def test_{rule_id}(lrp_analysis):",
            f"    np.save({rule_id + '.npy'!r}, lrp_analysis.heatmaps)",
            f"    np.save({rule_id + '_outputs.npy'!r}, lrp_analysis.outputs)",
            f"    assert lrp_analysis.softmax_stripped is {stripped}",
            "",
        ]
    return "\n".join(lines)


IG = ("integrated_gradients", {"steps": 8})


def test_integrated_gradients_on_an_input_named_input_1(cnns, pytester, tensorflow_imported_once):
    tf = tensorflow_imported_once
    x = np.load(cnns["x"])["x"]
    with pytest.raises(ValueError, match='The name "input_1" is used 2 times in the model'):
        usual_way(tf, cnns["input_1"], x, *IG)  # innvestigate 2.1.2: its wrapper's new Input is called input_1 too
    rules = {"ig": IG, "z": ("lrp.z", {})}
    pytester.makepyfile(test_save=saving_tests(rules))
    result = pytester.runpytest(f"--lrp-model={cnns['input_1']}", f"--lrp-inputs={cnns['x']}")
    result.assert_outcomes(passed=2)
    for rule_id, (analyzer, params) in rules.items():
        expected = usual_way(tf, cnns["pixels"], x, analyzer, params)  # the same model, its input named otherwise
        got = np.load(pytester.path / f"{rule_id}.npy")
        assert np.abs(got).sum() > 0
        np.testing.assert_array_equal(got, expected, err_msg=rule_id)


def test_a_final_softmax_layer_is_stripped_like_an_activation(cnns, pytester, tensorflow_imported_once):
    tf = tensorflow_imported_once
    x = np.load(cnns["x"])["x"]
    with pytest.raises(TypeError, match="Keyword argument not understood"):
        usual_way(tf, cnns["softmax_layer"], x, "lrp.z", {}, strip=True)  # innvestigate 2.1.2's model_wo_softmax
    rules = {"z": ("lrp.z", {}), "eps": ("lrp.epsilon", {"epsilon": 0.1}), "ig": IG, "grad": ("input_t_gradient", {})}
    pytester.makepyfile(test_save=saving_tests(rules, stripped=True))
    result = pytester.runpytest(f"--lrp-model={cnns['softmax_layer']}", f"--lrp-inputs={cnns['x']}")
    result.assert_outcomes(passed=len(rules))
    with tf.Graph().as_default():
        logits = tf.keras.models.load_model(str(cnns["pixels"]), compile=False).predict(x, verbose=0)
    for rule_id, (analyzer, params) in rules.items():
        expected = usual_way(tf, cnns["softmax_activation"], x, analyzer, params, strip=True)
        got = np.load(pytester.path / f"{rule_id}.npy")
        assert np.abs(got).sum() > 0
        np.testing.assert_array_equal(got, expected, err_msg=rule_id)
        # What is explained are the pre-softmax logits, as for Activation('softmax').
        np.testing.assert_allclose(
            np.load(pytester.path / f"{rule_id}_outputs.npy"), logits, rtol=1e-6, err_msg=rule_id
        )


@pytest.mark.slow
def test_a_warning_type_model_check_about_relu_layers_is_overridden_and_said(
    relu_layer_models, pytester, tensorflow_imported_once
):
    tf = tensorflow_imported_once
    path, inputs = relu_layer_models["residual"], relu_layer_models["x"]
    x = np.load(inputs)["x"]
    with pytest.raises(NotImplementedError):
        usual_way(tf, path, x, "lrp.z", {}, strip=True)  # innvestigate 2.1.2 refuses the ReLU() layers
    rules = {"z": ("lrp.z", {}), "alpha": ("lrp.alpha_2_beta_1", {})}
    pytester.makepyfile(test_save=saving_tests(rules, stripped=True))
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: z, analyzer: lrp.z, tolerance: {rtol: 100}, checks: [conservation, finite]}\n"
    )
    result = pytester.runpytest(
        "rules.yaml",
        "test_save.py",
        f"--lrp-model={path}",
        f"--lrp-inputs={inputs}",
        "--lrp-report=report.json",
        "--junitxml=junit.xml",
    )
    result.assert_outcomes(passed=4)
    note = (
        f'innvestigate\'s model check "{CHECK_MESSAGE}" about layers stem_relu, b0_relu1, b0_relu2 was overridden: '
        "their rules are well defined (pytest-lrp's numpy reference implements them)"
    )
    result.stdout.fnmatch_lines([f"lrp: residual: {note} (rules z)"])
    for rule_id, (analyzer, params) in rules.items():
        expected = usual_way(tf, path, x, analyzer, {**params, "disable_model_checks": True}, strip=True)
        np.testing.assert_array_equal(np.load(pytester.path / f"{rule_id}.npy"), expected, err_msg=rule_id)
    records = json.loads((pytester.path / "report.json").read_text())["results"]
    assert [record.get("notes") for record in records] == [[note], [note]]  # the rule file's two tests
    properties = [
        p.get("value")
        for p in ElementTree.parse(pytester.path / "junit.xml").iter("property")
        if p.get("name") == "lrp_note"
    ]
    assert properties == [note, note]  # the rule file's two tests


def test_a_rule_with_disable_model_checks_gets_no_note(relu_layer_models, pytester):
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: z, analyzer: lrp.z, params: {disable_model_checks: true}, tolerance: {rtol: 100}, checks: [conservation]}\n"
    )
    result = pytester.runpytest(
        "rules.yaml", f"--lrp-model={relu_layer_models['residual']}", f"--lrp-inputs={relu_layer_models['x']}"
    )
    result.assert_outcomes(passed=1)
    assert "was overridden" not in result.stdout.str()


def test_a_layer_the_reference_does_not_know_is_still_refused_in_one_line(relu_layer_models, pytester):
    (pytester.path / "rules.yaml").write_text("rules:\n  - {id: z, analyzer: lrp.z, checks: [conservation, finite]}\n")
    result = pytester.runpytest(
        "rules.yaml", f"--lrp-model={relu_layer_models['relu6']}", f"--lrp-inputs={relu_layer_models['x1']}"
    )
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            f"*relu6.h5: innvestigate refuses to run lrp.z on this model (rule 'z'): innvestigate's model check says \"{CHECK_MESSAGE}\" "
            "(layers relu6); to analyze anyway, set `disable_model_checks: true` in the rule's params"
        ]
    )
    assert "Traceback" not in result.stdout.str() and "was overridden" not in result.stdout.str()


def test_well_defined_layers_are_those_the_reference_implements(tensorflow_imported_once):
    layers = tensorflow_imported_once.keras.layers
    assert upstream_fixes.well_defined(layers.ReLU())
    assert upstream_fixes.well_defined(layers.Add())
    assert upstream_fixes.well_defined(layers.GlobalAveragePooling2D())
    assert not upstream_fixes.well_defined(layers.ReLU(max_value=6.0))
    assert not upstream_fixes.well_defined(layers.LeakyReLU())
    assert not upstream_fixes.well_defined(layers.Multiply())


def test_the_model_check_patch_is_undone_when_the_build_raises(tensorflow_imported_once):
    import innvestigate

    base = innvestigate.analyzer.base.AnalyzerBase
    before = base.__dict__["_do_model_checks"]
    with pytest.raises(RuntimeError, match="build failed"):
        with upstream_fixes.patched_model_checks(innvestigate, []):
            assert base._do_model_checks.__module__ == upstream_fixes.__name__
            raise RuntimeError("build failed")
    assert base.__dict__["_do_model_checks"] is before


def test_the_reference_reads_a_final_softmax_layer_as_the_activation_it_computes(cnns, pytester):
    # The numpy reference knows Activation('softmax') only; without the translation it skipped such a model
    # ("has no reference") and the leak split was missing.
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: z, analyzer: lrp.z, checks: [conservation, reference]}\n"
    )
    outcomes = {}
    for name in ("softmax_layer", "softmax_activation"):
        result = pytester.runpytest(
            "rules.yaml", f"--lrp-model={cnns[name]}", f"--lrp-inputs={cnns['x']}", f"--lrp-report={name}.json"
        )
        result.assert_outcomes(failed=1, passed=1)  # z leaks into the biases, undeclared; the reference agrees
        records = json.loads((pytester.path / f"{name}.json").read_text())["results"]
        outcomes[name] = [(r["check"], r["outcome"], r.get("leak_split"), r["sums"]) for r in records]
    assert outcomes["softmax_layer"] == outcomes["softmax_activation"]
    assert "bias" in outcomes["softmax_layer"][0][2]
