"""Where relevance leaks, and the reports for CI: summary, JSON, JUnit XML, heatmap images."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _chain(tf, path: Path, shape: str, leak: str, seed: int = 5) -> Path:
    """A bias-free ReLU network 4-6-5-4-3 whose only bias-like term sits in layer `leak`.

    `leak` is "d2" (a Dense layer with a bias) or "bn" (a BatchNormalization after d2,
    whose shift acts as a bias). The z rule conserves everywhere else, so that is
    where relevance must be reported to change.
    """
    rng = np.random.default_rng(seed)
    layers = tf.keras.layers

    def dense(units, name):
        return layers.Dense(units, activation="relu", use_bias=(name == leak), name=name)

    body = [dense(6, "d1"), dense(5, "d2")]
    if leak == "bn":
        body.append(layers.BatchNormalization(name="bn"))
    body += [dense(4, "d3"), layers.Dense(3, use_bias=False, name="out")]
    if shape == "sequential":
        model = tf.keras.Sequential(body)
        model.build((None, 4))
    elif shape == "sequential-with-input":
        model = tf.keras.Sequential([tf.keras.Input((4,)), *body])
    else:
        x = inputs = tf.keras.Input((4,), name="pixels")
        for layer in body:
            x = layer(x)
        model = tf.keras.Model(inputs, x)
    weights = []
    for w in model.get_weights():
        weights.append(np.abs(rng.normal(0.5, 0.3, w.shape)).astype(np.float32))  # positive: every unit active
    model.set_weights(weights)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def leak_models(tmp_path_factory, tensorflow_imported_once):
    folder = tmp_path_factory.mktemp("leaks")
    tf = tensorflow_imported_once
    models = {
        f"{shape}-d2": _chain(tf, folder / f"{shape}-d2.h5", shape, "d2")
        for shape in ("sequential", "sequential-with-input", "functional")
    }
    models["functional-bn"] = _chain(tf, folder / "functional-bn.h5", "functional", "bn")
    return models


def _report(pytester, *args) -> dict:
    result = pytester.runpytest(*args, "-k", "conservation", "--lrp-report=report.json")
    return result, json.loads((pytester.path / "report.json").read_text())


@pytest.mark.parametrize(
    "model, layer, cls",
    [
        ("sequential-d2", "d2", "Dense"),
        ("sequential-with-input-d2", "d2", "Dense"),
        ("functional-d2", "d2", "Dense"),
        ("functional-bn", "bn", "BatchNormalization"),
    ],
)
def test_the_layer_that_leaks_is_named(leak_models, pytester, model, layer, cls):
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: z, analyzer: lrp.z, tolerance: {rtol: 1.0e-6, atol: 0}}\n"
    )
    result, report = _report(pytester, f"--lrp-model={leak_models[model]}", "rules.yaml")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [f"largest change at layer '{layer}' ({cls}): * -> * ([+-]*%)", "relevance per layer, sample *"]
    )
    (record,) = report["results"]
    assert record["leak_layer"]["name"] == layer and record["leak_layer"]["class"] == cls
    names = [entry["name"] for entry in record["layers"]]
    expected = ["out", "d3"] + (["bn"] if layer == "bn" else []) + ["d2", "d1"]
    assert names[:-1] == expected  # output first, the model input last
    assert record["layers"][-1]["class"] == "InputLayer"
    assert record["layers"][-1]["relevance"] == pytest.approx(record["sums"][record["worst_sample"]])
    # everything above the leaking layer still carries the full output relevance
    assert record["layers"][0]["relevance"] == pytest.approx(record["targets"][record["worst_sample"]], rel=1e-5)


def test_alpha_beta_on_a_zero_background_leaks_in_the_first_layer(pytester):
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - id: ab\n    analyzer: lrp.alpha_2_beta_1_IB\n    xfail: one term vanishes on the zero background\n"
    )
    result, report = _report(
        pytester,
        f"--lrp-model={EXAMPLES / 'cnn.hdf5'}",
        f"--lrp-inputs={EXAMPLES / 'digits.npz'}",
        "--lrp-samples=4",
        "rules.yaml",
        "-rx",
    )
    result.assert_outcomes(xfailed=1)
    result.stdout.fnmatch_lines(
        [
            "XFAIL rules.yaml::conservation[[]cnn-ab[]] - one term vanishes on the zero background; "
            "largest change at layer 'conv2d' (Conv2D): * -> * (+*%); "
            "leak by mechanism (numpy reference): unbalanced +*"
        ]
    )
    (record,) = report["results"]
    assert record["leak_layer"]["name"] == "conv2d"
    above = [entry["relevance"] for entry in record["layers"][:-2]]  # every layer above the first convolution
    assert np.allclose(above, above[0], rtol=1e-4)


def test_report_errors_match_numpy(lrp_project, pytester):
    lrp_project.rules(
        f"defaults:\n  inputs: {lrp_project.inputs}\nrules:\n  - {{id: z, analyzer: lrp.z, xfail: bias}}\n  - {{id: flat, analyzer: lrp.flat}}\n"
    )
    result, report = _report(pytester, f"--lrp-model={lrp_project.biased.path}", "rules.yaml")
    result.assert_outcomes(passed=1, xfailed=1)
    assert set(report["versions"]) >= {"python", "tensorflow", "keras", "tf_keras", "innvestigate", "pytest-lrp"}
    assert report["versions"]["tensorflow"] is not None  # also where the distribution is tensorflow-cpu
    assert report["versions"]["tf_keras"] == _installed_version("tf_keras")
    assert report["versions"]["innvestigate"] == "2.1.2"
    records = {r["rule"]: r for r in report["results"]}
    z = records["z"]
    x = np.load(lrp_project.inputs)["x"]
    outputs = lrp_project.biased.outputs(x)
    errors = np.abs(lrp_project.biased.lrp_z(x).sum(axis=1) - outputs.max(axis=1))
    np.testing.assert_allclose(z["errors"], errors, rtol=1e-4, atol=1e-7)
    assert z["max_error"] == pytest.approx(errors.max(), rel=1e-4)
    np.testing.assert_allclose(z["targets"], outputs.max(axis=1), rtol=1e-5)
    assert z["neurons"] == outputs.argmax(axis=1).tolist()
    assert z["outcome"] == "xfailed" and records["flat"]["outcome"] == "passed"
    assert z["nodeid"] == "rules.yaml::conservation[biased-z]"
    assert (z["model"], z["analyzer"], z["params"], z["target"]) == ("biased", "lrp.z", {}, "output")
    assert z["tolerance"] == {"rtol": 1e-5, "atol": 1e-6}
    assert [layer["class"] for layer in z["layers"]] == ["Dense", "Dense", "Dense", "InputLayer"]


def test_ceiling_turns_an_explosion_into_a_failure(pytester, tensorflow_imported_once):
    # innvestigate issue 273: W = (1, -1), b = -1, x = (1, 1) makes alpha-beta divide by its stabilizer.
    tf = tensorflow_imported_once
    model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))])
    model.set_weights([np.array([[1.0], [-1.0]], np.float32), np.array([-1.0], np.float32)])
    model.save(pytester.path / "issue273.h5")
    np.save(pytester.path / "ones.npy", np.ones((1, 2), np.float32))
    (pytester.path / "rules.yaml").write_text(
        "defaults: {inputs: ones.npy}\nrules:\n"
        "  - {id: tolerated, analyzer: lrp.alpha_2_beta_1, xfail: known leak}\n"
        "  - {id: ceiling, analyzer: lrp.alpha_2_beta_1, xfail: known leak, max_error: 10}\n"
    )
    result, report = _report(pytester, "--lrp-model=issue273.h5", "rules.yaml")
    result.assert_outcomes(xfailed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*relevance error beyond the rule's ceiling max_error=10 in 1 of 1 samples (lrp.alpha_2_beta_1 on issue273); "
            "an expected leak does not excuse this"
        ]
    )
    assert {r["rule"]: r["max_relative_error"] > 10 for r in report["results"]} == {"tolerated": True, "ceiling": True}


def test_a_non_finite_heatmap_fails_even_when_a_leak_is_expected(pytester, tensorflow_imported_once):
    tf = tensorflow_imported_once
    model = tf.keras.Sequential(
        [
            tf.keras.layers.Dense(2, activation="relu", use_bias=False, input_shape=(2,)),
            tf.keras.layers.Dense(1, use_bias=False),
        ]
    )
    model.set_weights([np.full((2, 2), 1e30, np.float32), np.full((2, 1), 1e30, np.float32)])  # overflows float32
    model.save(pytester.path / "overflow.h5")
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: z, analyzer: lrp.z, xfail: {reason: anything, strict: false}}\n"
    )
    result = pytester.runpytest("--lrp-model=overflow.h5", "rules.yaml", "-k", "conservation")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["heatmap is not finite: * of 8 samples contain NaN or Inf (first: sample *; lrp.z on overflow)"]
    )


SUMMARY_RULES = (
    "rules:\n  - {id: z, analyzer: lrp.z, xfail: the bias absorbs relevance}\n  - {id: flat, analyzer: lrp.flat}\n"
    "  - {id: eps, analyzer: lrp.epsilon, params: {epsilon: 1.0}, tolerance: {rtol: 0}}\n"
)
SUMMARY_TESTS = ("-k", "conservation or (finite and flat)")  # 4 tests a model


def _section(result, title: str = "LRP results", until: str = "") -> list:
    """The lines of a `= title =` section of the output: up to the next `=` or `-` line, or the `=` line
    naming ``until``."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if line.startswith("=") and f" {title} " in line)
    rest = range(start + 1, len(lines))
    if until:
        # pytest's own warnings summary (a deprecation inside a dependency) may come in between: not ours to fit
        end = next(
            (
                i
                for i in rest
                if lines[i].startswith("=") and (f" {until} " in lines[i] or " warnings summary " in lines[i])
            ),
            len(lines),
        )
    else:
        end = next((i for i in rest if lines[i].startswith(("=", "- "))), len(lines))
    return lines[start + 1 : end]


def _both_models(lrp_project) -> tuple:
    return f"--lrp-model={lrp_project.biased.path}", f"--lrp-model={lrp_project.nobias.path}"


def test_the_results_list_what_needs_attention_and_one_line_per_model(lrp_project, pytester):
    lrp_project.rules(SUMMARY_RULES)
    args = (*_both_models(lrp_project), "rules.yaml", *SUMMARY_TESTS)
    result = pytester.runpytest(*args)
    result.assert_outcomes(failed=3, passed=4, xfailed=1)
    # What there is to fit (test_results_and_failure_details_fit_the_terminal): at 500 columns, the checks' own lines.
    assert max(map(len, _section(result, "FAILURES", until="LRP results"))) > 120
    # Sorted by model; under each model line its failures, then its unexpected passes and expected failures.
    section = _section(result)
    assert section[0].startswith("biased: 3 rules, 4 tests: 1 failed, 2 passed, 1 xfailed; 1 rule conserves (worst: ")
    assert section[3].startswith("nobias: 3 rules, 4 tests: 2 failed, 2 passed; 2 rules conserve (worst: ")
    assert len(section) == 6
    result.stdout.fnmatch_lines(
        [
            "biased: *",
            "  FAILED  eps  *% (rtol 0): stabilizer -*%*at dense_*",
            "  XFAIL   z    *%: the bias absorbs relevance",
            "nobias: *",
            "  FAILED         eps  *% (rtol 0): stabilizer -*% at dense*",
            "  XPASS(strict)  z    *%: the bias absorbs relevance",
        ]
    )
    assert not any("flat" in line for line in section[1:3] + section[4:])  # passed: no row
    # -q: the model lines and the failures only.
    quiet = _section(pytester.runpytest(*args, "-q"))
    assert [line.split()[0] for line in quiet] == ["biased:", "FAILED", "nobias:", "FAILED", "XPASS(strict)"]
    # Everything passed: the model lines alone.
    passing = _section(pytester.runpytest(*args[:3], "-k", "flat"))  # the models, the rule file
    assert [line.split(":")[0] for line in passing] == ["biased", "nobias"]
    assert "1 rule, 2 tests: 2 passed; 1 rule conserves" in passing[0]
    none = pytester.runpytest(*args, "--lrp-no-summary")
    assert "LRP results" not in none.stdout.str()
    plain = pytester.runpytest("-p", "no:cacheprovider", "--co")
    assert "LRP results" not in plain.stdout.str()


def test_verbose_results_have_a_row_for_every_test(lrp_project, pytester):
    lrp_project.rules(SUMMARY_RULES)
    args = (*_both_models(lrp_project), "rules.yaml", *SUMMARY_TESTS)
    result = pytester.runpytest(*args, "-v")
    section = _section(result)
    header = (
        "rule  check         outcome         analyzer     max |error|  rel. error  rtol, atol    "
        "leaking layer    leak by mechanism, reason"
    )
    # A rule's conservation row first, then its other checks; the same columns under every model.
    result.stdout.fnmatch_lines(
        [
            "biased: 3 rules, 4 tests: *",
            header,
            "eps   conservation  failed          lrp.epsilon  * 1*%  * 0, 1e-06 * dense_? (Dense)  "
            "stabilizer -*% at dense_?",
            "flat  conservation  passed          lrp.flat     * *%  * 1e-05, 1e-06",
            "flat  finite        passed          lrp.flat",
            "z     conservation  xfailed         lrp.z        * *%  * 1e-05, 1e-06 * dense_? (Dense)  bias -*%; "
            "the bias absorbs relevance",
            "nobias: 3 rules, 4 tests: *",
            header,
            "eps   conservation  failed          lrp.epsilon  *",
            "flat  conservation  passed          lrp.flat  *",
            "flat  finite        passed          lrp.flat",
            "z     conservation  xpassed-strict  lrp.z  * the bias absorbs relevance",
        ]
    )
    assert len(section) == 2 * (1 + 1 + 4)  # a model line, the header, 4 rows; at 500 columns nothing wraps
    header_line = next(line for line in section if line.startswith("rule "))
    assert all(line.index("passed") == header_line.index("outcome") for line in section if line.startswith("flat "))


@pytest.mark.parametrize("columns", [80, 120])
def test_results_and_failure_details_fit_the_terminal(lrp_project, pytester, monkeypatch, columns):
    lrp_project.rules(SUMMARY_RULES)
    args = (*_both_models(lrp_project), "rules.yaml", *SUMMARY_TESTS)
    monkeypatch.setenv("COLUMNS", str(columns))
    for verbosity in (("--lrp-report=report.json", "--junitxml=junit.xml"), ("-v",)):
        result = pytester.runpytest(*args, *verbosity)
        result.assert_outcomes(failed=3, passed=4, xfailed=1)
        details = _section(result, "FAILURES", until="LRP results")
        details = [line for line in details if not line.startswith("- generated xml file")]  # pytest's
        summary = _section(result)
        assert max(map(len, details + summary)) <= columns, [line for line in details + summary if len(line) > columns]
        # Wrapped, not cut: a long line goes on, indented, on the next lines.
        worst = next(i for i, line in enumerate(details) if line.startswith("worst sample "))
        joined = " ".join(line.strip() for line in details[worst : worst + 4])
        assert details[worst + 1].startswith("    ") and "tolerance = 1e-06 (atol 1e-06 + rtol 0 * |target|)" in joined
        if verbosity == ("-v",):
            assert sum(line.startswith(("eps ", "flat ", "z ")) for line in summary) == 8  # a row for every test
        else:
            assert len(summary) <= 2 * 2 + 4 and "  XFAIL   z " in "\n".join(summary)
    # The JSON report and JUnit XML keep the check's text as it is.
    records = json.loads((pytester.path / "report.json").read_text())["results"]
    messages = [r["message"] for r in records if r.get("message")]
    assert any(len(line) > columns for m in messages for line in m.splitlines())
    failure = ElementTree.parse(pytester.path / "junit.xml").getroot().find(".//failure")
    assert any(len(line) > columns for line in failure.text.splitlines())


def test_wrap_to_width_keeps_what_fits_and_indents_what_goes_on():
    from pytest_lrp.reports.width import abbreviate, wrap_to_width

    table = "  dense_1 (Dense)      10.5696 -> 9.65545      -0.914"
    long = "  dense (Dense, epsilon(1)): change -1.44 = bias -0.00897, stabilizer -1.43, unexplained -6.09e-08"
    wrapped = wrap_to_width(f"first\n{table}\n{long}", 60).splitlines()
    assert wrapped[:2] == ["first", table]  # kept as they are, spaces and all
    assert wrapped[2].startswith("  dense (Dense") and all(line.startswith("      ") for line in wrapped[3:])
    assert max(map(len, wrapped)) <= 60 and " ".join(w.strip() for w in wrapped[2:]) == long.strip()
    assert wrap_to_width("x" * 50, 30).splitlines() == ["x" * 30, "    " + "x" * 20]
    assert abbreviate("  one\ntwo", 40) == "  one; two" and abbreviate("a" * 50, 20) == "a" * 17 + "..."


def test_junit_xml_properties(lrp_project, pytester):
    lrp_project.rules("rules:\n  - {id: z, analyzer: lrp.z, xfail: bias}\n")
    pytester.runpytest(
        f"--lrp-model={lrp_project.biased.path}",
        f"--lrp-inputs={lrp_project.inputs}",
        "rules.yaml",
        "--junitxml=junit.xml",
        "-k",
        "conservation",
    )
    case = ElementTree.parse(pytester.path / "junit.xml").getroot().find(".//testcase")
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    x = np.load(lrp_project.inputs)["x"]
    net = lrp_project.biased
    errors = np.abs(net.lrp_z(x).sum(axis=1) - net.outputs(x).max(axis=1))
    assert float(properties["lrp_max_error"]) == pytest.approx(errors.max(), rel=1e-4)
    assert properties["lrp_tolerance"] == "rtol=1e-05 atol=1e-06"
    assert properties["lrp_leak_layer"].endswith("(Dense)")


def test_heatmap_images_for_failing_and_xfailing_tests(pytester):
    import matplotlib.image

    from pytest_lrp.reports.heatmap_images import image_size

    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: z, analyzer: lrp.z, xfail: bias}\n  - {id: w, analyzer: lrp.w_square}\n"
        "  - {id: eps, analyzer: lrp.epsilon, params: {epsilon: 1.0}, tolerance: {rtol: 0}}\n"
    )
    args = (
        f"--lrp-model={EXAMPLES / 'cnn.hdf5'}",
        f"--lrp-inputs={EXAMPLES / 'digits.npz'}",
        "--lrp-samples=5",
        "rules.yaml",
    )
    pytester.runpytest(*args, "-k", "conservation", "--lrp-heatmaps=maps").assert_outcomes(
        passed=1, xfailed=1, failed=1
    )
    written = sorted(p.name for p in (pytester.path / "maps").iterdir())
    assert written == ["rules.yaml_conservation_cnn-eps.png", "rules.yaml_conservation_cnn-z.png"]
    image = matplotlib.image.imread(pytester.path / "maps" / written[0])
    width, height = image_size(5)
    assert image.shape[:2] == (height, width)
    assert image.std() > 0.05  # not a blank canvas
    pytester.runpytest(*args, "-k", "conservation", "--lrp-heatmaps=all", "--lrp-heatmaps-all")
    assert len(list((pytester.path / "all").glob("*.png"))) == 3


@pytest.mark.xdist
def test_same_results_under_xdist(lrp_project, pytester):
    lrp_project.rules(
        f"defaults:\n  inputs: {lrp_project.inputs}\nrules:\n"
        "  - {id: z, analyzer: lrp.z, xfail: bias}\n  - {id: flat, analyzer: lrp.flat}\n  - {id: w, analyzer: lrp.w_square}\n"
    )
    args = (f"--lrp-model={lrp_project.biased.path}", f"--lrp-model={lrp_project.nobias.path}", "rules.yaml")
    serial, serial_report = _report(pytester, *args, "-p", "no:xdist")
    parallel, parallel_report = _report(pytester, *args, "-n", "2")
    parallel.assert_outcomes(
        **{k: v for k, v in serial.parseoutcomes().items() if k in ("passed", "failed", "xfailed")}
    )
    assert parallel.stdout.str().count("LRP results") == 1
    assert len(parallel_report["results"]) == 6

    def key(report):
        return {r["nodeid"]: (r["outcome"], r["errors"], r["leak_layer"]) for r in report["results"]}

    assert key(parallel_report) == key(serial_report)


def _installed_version(distribution: str):
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
