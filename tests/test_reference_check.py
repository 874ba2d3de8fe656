"""The `reference` check: innvestigate against the numpy reference, and faults injected into innvestigate."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

RULES = """
defaults:
  inputs: {inputs}
  checks: [conservation, reference]
rules:
{rules}
"""


def _rules(project, *rules: str, **defaults) -> None:
    extra = "".join(f"  {key}: {value}\n" for key, value in defaults.items())
    text = RULES.format(inputs=project.inputs, rules="\n".join(rules))
    project.rules(text.replace("  checks:", extra + "  checks:", 1))


def test_reference_agrees_with_innvestigate_on_every_rule_family(lrp_project, pytester):
    rules = [
        "  - {id: z, analyzer: lrp.z}",
        "  - {id: eps, analyzer: lrp.epsilon, params: {epsilon: 0.1}}",
        "  - {id: ab, analyzer: lrp.alpha_2_beta_1}",
        "  - {id: ab-ib, analyzer: lrp.alpha_2_beta_1_IB}",
        "  - {id: zplus, analyzer: lrp.z_plus, target: positive_output}",
        "  - {id: flat, analyzer: lrp.flat}",
        "  - {id: wsq, analyzer: lrp.w_square}",
        "  - {id: dt, analyzer: deep_taylor, target: positive_output}",
        "  - {id: preset-a, analyzer: lrp.sequential_preset_a}",
        "  - {id: ixg, analyzer: input_t_gradient}",
    ]
    _rules(lrp_project, *rules)
    result = pytester.runpytest(
        f"--lrp-model={lrp_project.biased.path}", "rules.yaml", "-m", "lrp_reference", "-v", "--lrp-report=report.json"
    )
    result.assert_outcomes(passed=len(rules))
    result.stdout.fnmatch_lines(["*rules.yaml::reference[[]biased-z[]] PASSED*"])
    records = {r["rule"]: r for r in json.loads((pytester.path / "report.json").read_text())["results"]}
    # The numbers behind the verdict are real: every layer was compared, and innvestigate's
    # float32 differs from the float64 reference by more than nothing but far less than the tolerance.
    z = records["z"]["reference"]
    compared = [layer["where"] for layer in z["layers"]]
    assert len(compared) == 2, compared  # the two layers above the first one; the first one hands down the heatmaps
    assert all(
        re.fullmatch(r"layer 'dense_\d+' \(Dense, rule z\): relevance it hands to 'dense(_\d+)?'", where)
        for where in compared
    ), compared
    assert z["heatmaps"]["where"].startswith("layer 'dense")
    assert z["first_divergence"] is None and z["heatmaps"]["outside"] == 0
    assert 0 < z["heatmaps"]["max_abs"] < 1e-4


def test_reference_check_matches_an_independent_numpy_z_rule(lrp_project, pytester):
    """The reference's heatmaps are the z rule computed here by hand (conftest's DenseNet.lrp_z)."""
    pytester.makepyfile(
        test_handwritten="""
        import numpy as np
        import pytest

        @pytest.mark.lrp_rule("lrp.z")
        def test_heatmaps(lrp_analysis):
            np.save("heatmaps.npy", lrp_analysis.heatmaps)
            assert lrp_analysis.reference is not None
    """
    )
    result = pytester.runpytest(f"--lrp-model={lrp_project.biased.path}", f"--lrp-inputs={lrp_project.inputs}")
    result.assert_outcomes(passed=1)
    import tensorflow as tf

    from pytest_lrp.reference import ReferenceModel, explain

    model = tf.keras.models.load_model(lrp_project.biased.path, compile=False)
    reference = ReferenceModel.from_keras(
        model.get_config(), {layer.name: layer.get_weights() for layer in model.layers}
    )
    x = np.load(lrp_project.inputs)["x"]
    # conftest's z rule adds its 1e-7 stabilizer (with z's sign) to every denominator; innvestigate, and
    # so the reference, only where a denominator is 0: they differ by up to 4e-5 of a value here.
    np.testing.assert_allclose(
        explain(reference, x, "lrp.z", {}).heatmap, lrp_project.biased.lrp_z(x), rtol=1e-4, atol=1e-9
    )
    np.testing.assert_allclose(
        np.load(pytester.path / "heatmaps.npy"), lrp_project.biased.lrp_z(x), rtol=1e-4, atol=1e-6
    )


def test_a_layer_without_reference_skips_with_one_line(pytester, tensorflow_imported_once, inputs_file):
    tf = tensorflow_imported_once
    model = tf.keras.Sequential(
        [
            tf.keras.layers.Dense(4, activation="tanh", input_shape=(5,), name="squash"),
            tf.keras.layers.Dense(2, name="out"),
        ]
    )
    model.save(pytester.path / "tanh.h5")
    pytester.makefile(
        ".yaml",
        rules=f"""
defaults: {{inputs: {inputs_file}, checks: [reference]}}
rules:
  - {{id: z, analyzer: lrp.z}}
""",
    )
    result = pytester.runpytest("--lrp-model=tanh.h5", "rules.yaml", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*the numpy reference cannot judge lrp.z on tanh: *squash*"])
    assert "Traceback" not in result.stdout.str()


# --- faults injected into innvestigate's rule code -----------------------------------------
# The inner pytest run happens in this process (pytester.runpytest), so a monkeypatched
# innvestigate is what the plugin analyzes with; the reference is untouched.


@pytest.fixture
def conv_project(pytester, conv_nets, inputs_8x8):
    class Project:
        nets = conv_nets

        @staticmethod
        def run(*rules: str, checks="[conservation, reference]", model="bias_free"):
            pytester.makefile(
                ".yaml", rules=f"defaults: {{inputs: {inputs_8x8}, checks: {checks}}}\nrules:\n" + "\n".join(rules)
            )
            return pytester.runpytest(f"--lrp-model={conv_nets[model]}", "rules.yaml", "-v", "--lrp-report=report.json")

        @staticmethod
        def records():
            return {
                (r["check"], r["rule"]): r for r in json.loads((pytester.path / "report.json").read_text())["results"]
            }

    return Project


def test_unpatched_innvestigate_passes_the_conv_net(conv_project):
    result = conv_project.run(
        "  - {id: z, analyzer: lrp.z}", "  - {id: ab, analyzer: lrp.alpha_2_beta_1_IB, leaks: [unbalanced, dropped]}"
    )
    # alpha2-beta1-ib leaks by its formula (an expected failure); the reference agrees with innvestigate on both
    result.assert_outcomes(passed=3, xfailed=1)


def test_a_transposed_kernel_conserves_but_fails_the_reference_at_that_layer(conv_project, monkeypatch):
    import innvestigate.backend.graph as igraph
    import tensorflow as tf

    original = igraph.copy_layer_wo_activation

    def transposed_kernel(layer, *args, **kwargs):
        if layer.name == "conv_b" and kwargs.get("weights") is None:
            # the kernel's two spatial axes swapped: same shape, relevance sent to mirrored pixels
            kwargs["weights"] = [tf.transpose(layer.kernel, (1, 0, 2, 3)), *list(layer.weights[1:])]
        return original(layer, *args, **kwargs)

    monkeypatch.setattr(igraph, "copy_layer_wo_activation", transposed_kernel)
    result = conv_project.run("  - {id: z, analyzer: lrp.z}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*conservation[[]conv_bias_free-z[]] PASSED*",
            "*reference[[]conv_bias_free-z[]] FAILED*",
            "*innvestigate differs from the numpy reference (lrp.z on conv_bias_free*",
            "first divergence from the output: layer 'conv_b' (Conv2D, rule z*",
        ]
    )


def test_a_changed_alpha_fails_the_reference_at_the_patched_layer(conv_project, monkeypatch):
    from innvestigate.analyzer.relevance_based import relevance_rule

    original = relevance_rule.AlphaBetaRule.__init__

    def alpha_three(self, layer, *args, **kwargs):
        original(self, layer, *args, **kwargs)
        if layer.name == "dense":
            self._alpha, self._beta = 3, 2  # still alpha - beta = 1

    monkeypatch.setattr(relevance_rule.AlphaBetaRule, "__init__", alpha_three)
    result = conv_project.run(
        "  - {id: ab, analyzer: lrp.alpha_2_beta_1_IB, leaks: [unbalanced, dropped]}", checks="[reference]"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["first divergence from the output: layer 'dense' (Dense, rule alpha_beta*"])


def test_a_dropped_stabilizer_is_unexplained_leak_and_a_reference_failure(conv_project, monkeypatch):
    from innvestigate.analyzer.relevance_based import relevance_rule

    original = relevance_rule.EpsilonRule.__init__

    def no_epsilon(self, layer, *args, **kwargs):
        original(self, layer, *args, **kwargs)
        if layer.name == "conv_a":
            self._epsilon = 1e-12

    monkeypatch.setattr(relevance_rule.EpsilonRule, "__init__", no_epsilon)
    result = conv_project.run(
        "  - {id: eps, analyzer: lrp.epsilon, params: {epsilon: 1.0}, leaks: [bias, stabilizer]}", model="biased"
    )
    result.assert_outcomes(failed=2)
    output = result.stdout.str()
    assert "first divergence from the output: layer 'conv_a' (Conv2D, rule epsilon" in output
    assert "beyond the tolerance: unexplained" in output
    records = conv_project.records()
    layers = {layer["name"]: layer for layer in records[("conservation", "eps")]["leaks"]["layers"]}
    # innvestigate lost nothing at conv_a to its stabilizer: what the formula loses there is unexplained,
    # while every other layer is accounted for to float32 noise
    assert layers["conv_a"]["stabilizer"] < 0
    assert abs(layers["conv_a"]["unexplained"]) > 0.1 * abs(layers["conv_a"]["stabilizer"])
    for name, layer in layers.items():
        if name != "conv_a" and layer["unexplained"] is not None:
            assert abs(layer["unexplained"]) < 1e-4 * abs(
                records[("conservation", "eps")]["targets"][records[("conservation", "eps")]["worst_sample"]]
            )


def test_a_crash_of_the_reference_fails_its_check_and_leaves_the_analysis_alone(conv_project, monkeypatch):
    import pytest_lrp.reference

    def broken(*args, **kwargs):
        raise KeyError("no such layer")

    monkeypatch.setattr(pytest_lrp.reference, "explain", broken)
    result = conv_project.run("  - {id: z, analyzer: lrp.z}")
    result.assert_outcomes(passed=1, failed=1)  # conservation holds on the bias-free net; the reference check fails
    result.stdout.fnmatch_lines(
        [
            "the numpy reference could not run lrp.z on conv_bias_free (KeyError: 'no such layer') (lrp.z on conv_bias_free)"
        ]
    )
