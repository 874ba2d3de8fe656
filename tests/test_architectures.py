"""Real architectures (issue 14, section 3) on a cheap stand-in: a residual CNN with Keras' default layer names.

Conv-BN-ReLU blocks, Add, GlobalAveragePooling2D, named by Keras as a user's fresh session names them
('add', 'add_1', 're_lu', ...). The keras.applications networks themselves run in bench/ (bench/deep.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.residual_cnn import residual_cnn

RULES = """
defaults:
  samples: 2
  tolerance: {rtol: 1.0e6}
  checks: [conservation, finite]
rules:
  - id: z
    analyzer: lrp.z
  - id: z-anyway
    analyzer: lrp.z
    params: {disable_model_checks: true}
  - id: alpha2-beta1-anyway
    analyzer: lrp.alpha_2_beta_1
    params: {disable_model_checks: true}
  - id: deep-taylor-anyway
    analyzer: deep_taylor
    params: {disable_model_checks: true}
  - id: input-times-gradient
    analyzer: input_t_gradient
  - id: integrated-gradients
    analyzer: integrated_gradients
    params: {steps: 4}
"""


@pytest.fixture(scope="module")
def default_named(tmp_path_factory, tensorflow_imported_once):
    tf = tensorflow_imported_once
    model, names, graph = residual_cnn(tf, blocks=2, named=False)
    assert {"add", "add_1", "re_lu", "batch_normalization", "conv2d"} <= set(names), names  # what makes it a test
    folder = tmp_path_factory.mktemp("architectures")
    with graph.as_default():
        model.save(folder / "residual.h5", include_optimizer=False)
    np.savez(folder / "x.npz", x=np.random.default_rng(1).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32))
    return folder / "residual.h5", folder / "x.npz", names


def test_a_model_check_about_relu_layers_is_overridden_and_the_run_says_so(default_named, pytester):
    # innvestigate 2.1.2 refuses ReLU() layers ("LRP is only tested for convolutional neural networks."), whose rule
    # is well defined: the analysis runs as with disable_model_checks and says so (engine/upstream_fixes.py; the
    # refusal of a layer the reference does not know is tested in test_upstream_fixes.py).
    path, inputs, _ = default_named
    (pytester.path / "rules.yaml").write_text(RULES)
    result = pytester.runpytest(
        "rules.yaml", f"--lrp-model={path}", f"--lrp-inputs={inputs}", "-k", "conservation and z and not anyway"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            'lrp: residual: innvestigate\'s model check "LRP is only tested for convolutional neural networks." about layers '
            "re_lu, re_lu_1, * was overridden: their rules are well defined (pytest-lrp's numpy reference implements them) (rules z)",
        ]
    )
    assert "NotImplementedError" not in result.stdout.str()


@pytest.mark.slow
def test_default_layer_names_do_not_collide_with_the_layers_innvestigate_adds(default_named, pytester):
    # Before: 'The name "add" is used 2 times in the model' for every rule, input_t_gradient included.
    path, inputs, _ = default_named
    (pytester.path / "rules.yaml").write_text(RULES)
    result = pytester.runpytest(
        "rules.yaml",
        f"--lrp-model={path}",
        f"--lrp-inputs={inputs}",
        "-k",
        "anyway or gradient",
        "--lrp-report=report.json",
    )
    result.assert_outcomes(passed=10)
    assert "used 2 times" not in result.stdout.str()


def test_reports_name_the_users_layers(default_named, pytester):
    path, inputs, names = default_named
    pytester.makepyfile(
        test_layers="""
        import json
        import pytest

        @pytest.mark.lrp_rule("lrp.z", disable_model_checks=True)
        def test_layers(lrp_analysis):
            json.dump([name for layer in lrp_analysis.layers for name in (layer.members or (layer.name,))], open("layers.json", "w"))
    """
    )
    result = pytester.runpytest(f"--lrp-model={path}", f"--lrp-inputs={inputs}", "--lrp-samples=2")
    result.assert_outcomes(passed=1)
    reported = json.loads((pytester.path / "layers.json").read_text())
    assert "add" in reported and "add_1" in reported
    assert set(reported) <= set(names), sorted(
        set(reported) - set(names)
    )  # no layer innvestigate added, no renamed one


def test_per_layer_changes_add_up_to_the_error_on_a_residual_network(default_named, pytester):
    # innvestigate keeps one relevance array per tensor, summed over the layers reading it. A block's input
    # feeds its first convolution and its Add; charging the Add with that sum gave it the convolution's
    # change too (and the convolution none), so the per-layer changes no longer added up to the total and
    # the leak accounting showed 'unexplained' relevance at every Add. Such layers are now one entry.
    path, inputs, _ = default_named
    pytester.makepyfile(
        test_layers="""
        import json
        import numpy as np
        import pytest

        @pytest.mark.lrp_rule("lrp.w_square", disable_model_checks=True)
        def test_w_square(lrp_analysis):
            layers = lrp_analysis.layers
            start = layers[0].at_output
            changes = np.sum([layer.at_inputs - layer.at_output for layer in layers if layer.cls != "InputLayer"], axis=0)
            np.testing.assert_allclose(start + changes, lrp_analysis.heatmaps.reshape(2, -1).sum(axis=1), rtol=1e-5)
            unexplained = [np.max(np.abs(layer.unexplained)) for layer in lrp_analysis.leaks.layers if layer.cls != "InputLayer"]
            json.dump({"groups": [[layer.name, list(layer.members)] for layer in layers if layer.members],
                       "unexplained": max(unexplained), "scale": float(np.max(np.abs(start)))}, open("out.json", "w"))
    """
    )
    result = pytester.runpytest(f"--lrp-model={path}", f"--lrp-inputs={inputs}", "--lrp-samples=2")
    result.assert_outcomes(passed=1)
    out = json.loads((pytester.path / "out.json").read_text())
    assert ["add + conv2d_1", ["add", "conv2d_1"]] in out["groups"], out["groups"]
    assert out["unexplained"] < 1e-4 * out["scale"], out


def test_a_layer_deep_taylor_has_no_rule_for_is_named_in_one_line(pytester, tensorflow_imported_once):
    # EfficientNet's swish activations: innvestigate's Deep Taylor raised "NotImplementedError: Layer
    # <keras.src.layers.core.activation.Activation object at 0x7f...> not supported.", naming no layer.
    tf = tensorflow_imported_once
    graph = tf.Graph()
    with graph.as_default():
        model = tf.keras.Sequential(
            [
                tf.keras.layers.Dense(4, input_shape=(3,), name="hidden"),
                tf.keras.layers.Activation("swish", name="swish_here"),
                tf.keras.layers.Dense(2, name="logits"),
            ]
        )
        model.save(pytester.path / "swish.h5", include_optimizer=False)
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - id: dt\n    analyzer: deep_taylor\n    params: {disable_model_checks: true}\n"
    )
    result = pytester.runpytest("rules.yaml", "--lrp-model=swish.h5", "--lrp-samples=2")
    result.assert_outcomes(errors=2)  # conservation and finite
    result.stdout.fnmatch_lines(
        [
            "*swish.h5: deep_taylor has no rule for layer 'swish_here' (Activation, activation 'swish') (rule 'dt'): "
            "innvestigate 2.1.2's Deep Taylor maps only ReLU activations, *and refuses any other layer*"
        ]
    )
    assert "object at 0x" not in result.stdout.str()


def test_a_separate_softmax_layer_is_dropped_and_the_layers_keep_their_names(pytester, tensorflow_imported_once):
    # model_wo_softmax drops Activation('softmax') and leaves the Dense before it as the last layer:
    # it must stay 'logits (Dense)', not take the dropped layer's name ('probabilities (Dense)').
    tf = tensorflow_imported_once
    graph = tf.Graph()
    with graph.as_default():
        model = tf.keras.Sequential(
            [
                tf.keras.layers.Dense(4, activation="relu", input_shape=(3,), name="hidden"),
                tf.keras.layers.Dense(2, name="logits"),
                tf.keras.layers.Activation("softmax", name="probabilities"),
            ]
        )
        model.save(pytester.path / "separate_softmax.h5", include_optimizer=False)
    pytester.makepyfile(
        test_layers="""
        import json
        import pytest

        @pytest.mark.lrp_rule("lrp.z")
        def test_layers(lrp_analysis):
            json.dump([[layer.name, layer.cls] for layer in lrp_analysis.layers], open("layers.json", "w"))
    """
    )
    result = pytester.runpytest("--lrp-model=separate_softmax.h5", "--lrp-samples=2")
    result.assert_outcomes(passed=1)
    reported = json.loads((pytester.path / "layers.json").read_text())
    assert reported[:2] == [["logits", "Dense"], ["hidden", "Dense"]], reported
