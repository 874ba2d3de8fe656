"""Model files written by Keras 3: translated to tf.keras 2, checked, and refused safely when bad.

The Keras 3 files in tests/data/keras3 were written by Keras 3 itself
(make_keras3_files.py, versions in VERSIONS.txt), with each layer's weights beside them
(NAME_weights.npz) and the outputs Keras 3 computed (y in NAME_inputs.npz). Each network is
also built here by hand in tf.keras 2 from those weights (its "twin"), which is the
independent reference: the translated model, the twin and Keras 3's own outputs must agree,
and a run on the Keras 3 file must give the twin's verdicts and heatmaps.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data" / "keras3"
NETWORKS = ("seq_cnn", "functional", "pools")


def _seq_cnn(keras):
    layers = keras.layers
    return keras.Sequential(
        [
            layers.InputLayer(input_shape=(8, 8, 1), name="input_layer"),
            layers.Conv2D(4, 3, activation="relu", name="conv2d"),
            layers.MaxPooling2D(2, name="max_pooling2d"),
            layers.Flatten(name="flatten"),
            layers.Dense(6, activation="relu", name="dense"),
            layers.Dropout(0.25, name="dropout"),
            layers.Dense(3, name="dense_1"),
            layers.Activation("softmax", name="activation"),
        ],
        name="seq_cnn",
    )


def _functional(keras):
    layers = keras.layers
    inputs = keras.Input((8, 8, 2), name="image")
    x = layers.ZeroPadding2D(1, name="zero_padding2d")(inputs)
    x = layers.Conv2D(4, 3, name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    a = layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise")(x)
    b = layers.SeparableConv2D(4, 3, padding="same", activation="relu", name="separable")(x)
    x = layers.Add(name="sum")([a, b])
    x = layers.Concatenate(name="joined")([x, a])
    x = layers.AveragePooling2D(2, name="avg")(x)
    x = layers.Conv2D(4, 1, activation="relu", name="mix")(x)
    x = layers.Reshape((16, 4), name="to_sequence")(x)
    x = layers.Conv1D(4, 3, padding="same", activation="relu", name="conv1d")(x)
    x = layers.MaxPooling1D(2, name="pool1d")(x)
    x = layers.Reshape((2, 2, 2, 4), name="to_volume")(x)
    x = layers.Conv3D(3, 2, padding="same", activation="relu", name="conv3d")(x)
    x = layers.GlobalAveragePooling3D(name="gap3d")(x)
    x = layers.Dropout(0.1, name="drop")(x)
    x = layers.Dense(5, activation="relu", name="hidden")(x)
    return keras.Model(inputs, layers.Dense(3, name="logits")(x), name="functional")


def _pools(keras):
    layers = keras.layers
    inputs = keras.Input((12, 3), name="signal")
    x = layers.Rescaling(2.0, offset=-1.0, name="rescale")(inputs)
    x = layers.Normalization(axis=-1, name="norm")(x)
    x = layers.Conv1D(4, 3, activation="relu", name="c1")(x)
    x = layers.AveragePooling1D(2, name="avg1")(x)
    g1 = layers.GlobalMaxPooling1D(name="gmax1")(x)
    g2 = layers.GlobalAveragePooling1D(name="gavg1")(x)
    y = layers.Reshape((5, 4, 1), name="to_image")(x)
    y = layers.Conv2D(2, 2, padding="same", activation="relu", name="c2")(y)
    y = layers.MaxPooling2D(2, padding="same", name="max2")(y)
    g3 = layers.GlobalMaxPooling2D(name="gmax2")(y)
    g4 = layers.GlobalAveragePooling2D(name="gavg2")(y)
    x = layers.Concatenate(name="all")([g1, g2, g3, g4])
    x = layers.Activation("relu", name="act")(x)
    return keras.Model(inputs, layers.Dense(2, activation="softmax", name="out")(x), name="pools")


TWINS = {"seq_cnn": _seq_cnn, "functional": _functional, "pools": _pools}


def _twin(tf, name: str):
    """The network built by hand in tf.keras 2, with the weights Keras 3 had (by layer name)."""
    model = TWINS[name](tf.keras)
    stored = np.load(DATA / f"{name}_weights.npz")
    for layer in model.layers:
        arrays = [stored[f"{layer.name}/{i}"] for i in range(len(layer.weights))]
        if arrays:
            layer.set_weights(arrays)
            if hasattr(layer, "finalize_state"):  # tf.keras 2's Normalization: mean/variance tensors from the weights
                layer.finalize_state()
    return model


@pytest.fixture(scope="session")
def twins(tmp_path_factory, tensorflow_imported_once) -> dict:
    """name -> the twin saved as a tf.keras 2 .h5 file."""
    folder = tmp_path_factory.mktemp("twins")
    paths = {}
    for name in NETWORKS:
        paths[name] = folder / f"{name}_tf2.h5"
        _twin(tensorflow_imported_once, name).save(paths[name], include_optimizer=False)
    return paths


def _recorded(name: str):
    with np.load(DATA / f"{name}_inputs.npz") as data:
        return data["x"], data["y"]


# --- the translation ------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".keras", ".h5"])
@pytest.mark.parametrize("name", NETWORKS)
def test_translated_model_computes_what_keras3_computed(name, ext, tensorflow_imported_once):
    from pytest_lrp.models.modelfile import load_model_file

    model = load_model_file(DATA / f"{name}{ext}", name)
    x, y = _recorded(name)
    twin = _twin(tensorflow_imported_once, name)
    assert model.keras3_version == "3.15.1"
    assert [layer.name for layer in model.keras_model.layers] == [layer.name for layer in twin.layers]
    translated = model.predict(x)
    np.testing.assert_allclose(translated, np.asarray(twin(x, training=False)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(translated, y, rtol=1e-5, atol=1e-6)
    for mine, theirs in zip(model.keras_model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(mine, theirs)


def test_tf_keras_2_files_are_not_translated(biased_net):
    from pytest_lrp.models.modelfile import load_model_file

    for ext in (".h5", ".keras"):
        assert load_model_file(biased_net.paths[ext], "biased").keras3_version is None


# --- same weights, same verdicts and heatmaps (pytester runs) ---------------------------------

HEATMAP_TEST = """
import numpy as np
import pytest
from pathlib import Path

@pytest.mark.lrp_rule({analyzer!r}, id="probe", **{params!r})
def test_save_heatmaps(lrp_model, lrp_analysis):
    folder = Path("heatmaps")
    folder.mkdir(exist_ok=True)
    np.save(folder / (lrp_model.name + ".npy"), lrp_analysis.heatmaps)
"""

SAME_RUNS = {
    # A rule that conserves, one that leaks (xfail), a gradient, and the checks of the default suite.
    "seq_cnn": (
        "rules:\n"
        "  - {id: flat, analyzer: lrp.flat, checks: [conservation, finite, positive, determinism]}\n"
        "  - {id: z, analyzer: lrp.z, xfail: the bias absorbs relevance, checks: [conservation, batch_invariance]}\n"
        "  - {id: ab, analyzer: lrp.alpha_2_beta_1, xfail: the bias enters both denominators}\n"
        "  - {id: grad, analyzer: input_t_gradient, xfail: not conservative}\n",
        ("lrp.alpha_2_beta_1", {}),
    ),
    "functional": (
        "rules:\n"
        "  - {id: z, analyzer: lrp.z, params: {disable_model_checks: true}, tolerance: {rtol: 0.5}, checks: [conservation, finite]}\n"
        "  - {id: grad, analyzer: input_t_gradient, xfail: not conservative, checks: [conservation, finite, determinism]}\n",
        ("lrp.z", {"disable_model_checks": True}),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", SAME_RUNS)
def test_keras3_files_give_the_twins_verdicts_and_heatmaps(pytester, twins, name):
    rules, (analyzer, params) = SAME_RUNS[name]
    models = {"k3_keras": DATA / f"{name}.keras", "k3_h5": DATA / f"{name}.h5", "tf2": twins[name]}
    for stem, source in models.items():
        shutil.copy(source, pytester.path / f"{stem}{source.suffix}")
    shutil.copy(DATA / f"{name}_inputs.npz", pytester.path / "inputs.npz")
    (pytester.path / "rules.yaml").write_text(f"defaults:\n  inputs: inputs.npz\n{rules}")
    pytester.makepyfile(test_heatmaps=HEATMAP_TEST.format(analyzer=analyzer, params=params))
    flags = [f"--lrp-model={stem}{source.suffix}" for stem, source in models.items()]
    result = pytester.runpytest(
        "rules.yaml", "test_heatmaps.py", "--lrp-rules=rules.yaml", "--lrp-report=report.json", *flags
    )
    outcomes = result.parseoutcomes()
    assert "errors" not in outcomes and outcomes.get("passed", 0) >= 3, result.stdout.str()

    records = json.loads((pytester.path / "report.json").read_text())["results"]
    verdicts = {stem: {} for stem in models}
    for record in records:
        verdicts[record["model"]][(record["rule"], record["check"])] = (record["outcome"], record["max_error"])
    assert verdicts["tf2"] and len({len(v) for v in verdicts.values()}) == 1
    for stem in ("k3_keras", "k3_h5"):
        assert verdicts[stem].keys() == verdicts["tf2"].keys()
        for key, (outcome, error) in verdicts["tf2"].items():
            assert verdicts[stem][key][0] == outcome, key
            assert verdicts[stem][key][1] == pytest.approx(error, rel=1e-4, abs=1e-6), key

    reference = np.load(pytester.path / "heatmaps" / "tf2.npy")
    assert np.abs(reference).max() > 0
    for stem in ("k3_keras", "k3_h5"):
        np.testing.assert_allclose(
            np.load(pytester.path / "heatmaps" / f"{stem}.npy"),
            reference,
            rtol=1e-5,
            atol=1e-6 * np.abs(reference).max(),
        )


# --- recorded outputs (y) and the report header ------------------------------------------------


def _inputs_file(folder: Path, name: str, y=None, with_y=True) -> Path:
    x, recorded = _recorded(name)
    path = folder / f"{name}_inputs.npz"
    if with_y:
        np.savez(path, x=x, y=recorded if y is None else y)
    else:
        np.savez(path, x=x)
    return path


RULE_Z = "rules:\n  - {id: flat, analyzer: lrp.flat, checks: [conservation, finite]}\n"


def test_recorded_outputs_that_match_let_the_tests_run_and_the_header_says_checked(pytester):
    inputs = _inputs_file(pytester.path, "seq_cnn")
    (pytester.path / "rules.yaml").write_text(RULE_Z)
    result = pytester.runpytest("rules.yaml", f"--lrp-model={DATA / 'seq_cnn.keras'}", f"--lrp-inputs={inputs}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "lrp: *seq_cnn.keras: written by Keras 3.15.1, translated to tf.keras 2; checked against the outputs (y) in *seq_cnn_inputs.npz"
        ]
    )


@pytest.mark.parametrize("model", ["seq_cnn.keras", "seq_cnn.h5", "twin"])
def test_outputs_that_differ_from_the_recorded_ones_make_every_test_an_error(pytester, twins, model):
    _x, y = _recorded("seq_cnn")
    wrong = y.copy()
    wrong[2] = wrong[2, ::-1]  # what a transposed kernel would do to one sample
    inputs = _inputs_file(pytester.path, "seq_cnn", y=wrong)
    path = twins["seq_cnn"] if model == "twin" else DATA / model
    (pytester.path / "rules.yaml").write_text(RULE_Z)
    result = pytester.runpytest("rules.yaml", f"--lrp-model={path}", f"--lrp-inputs={inputs}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # one line for the run, not one per test (test_one_message.py)
    largest = float(np.abs(y - wrong).max())
    result.stderr.fnmatch_lines(
        [
            f"ERROR: *{path.name}: predicts other outputs than those recorded in *seq_cnn_inputs.npz (y): largest difference "
            f"{largest:.3g} at sample 2 (tolerance *); refusing to explain another model than the one that was recorded (the inputs: *"
        ]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_recorded_outputs_of_another_shape_are_an_error(pytester):
    _x, y = _recorded("seq_cnn")
    inputs = _inputs_file(pytester.path, "seq_cnn", y=y[:, :2])
    (pytester.path / "rules.yaml").write_text(RULE_Z)
    result = pytester.runpytest("rules.yaml", f"--lrp-model={DATA / 'seq_cnn.h5'}", f"--lrp-inputs={inputs}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: *seq_cnn_inputs.npz: the recorded outputs y have shape (4, 2), the model predicts (4, 3) (y is read as model.predict(x) *; store class labels under another name) (the inputs: *"
        ]
    )


def _swap_bn_statistics(monkeypatch):
    """A translation bug no shape check sees: BatchNormalization's gamma and beta swapped."""
    from pytest_lrp.models import keras3

    original = keras3._set_weights

    def swapped(path, model, weights):
        weights = dict(weights)
        gamma, beta, mean, variance = weights["stem_bn"]
        weights["stem_bn"] = [beta, gamma, mean, variance]
        original(path, model, weights)

    monkeypatch.setattr(keras3, "_set_weights", swapped)


def test_a_silently_wrong_translation_is_caught_by_the_recorded_outputs(pytester, monkeypatch):
    _swap_bn_statistics(monkeypatch)
    inputs = _inputs_file(pytester.path, "functional")
    (pytester.path / "rules.yaml").write_text(RULE_Z)
    result = pytester.runpytest("rules.yaml", f"--lrp-model={DATA / 'functional.keras'}", f"--lrp-inputs={inputs}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: *functional.keras: predicts other outputs than those recorded in *functional_inputs.npz (y): largest difference *"
        ]
    )


def test_without_recorded_outputs_keras3_itself_checks_the_translation_or_the_header_says_unchecked(
    pytester, monkeypatch
):
    from pytest_lrp.models.fidelity import keras3_importable

    _swap_bn_statistics(monkeypatch)
    inputs = _inputs_file(pytester.path, "functional", with_y=False)
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: flat, analyzer: lrp.flat, params: {disable_model_checks: true}}\n"
    )
    result = pytester.runpytest(
        "rules.yaml", f"--lrp-model={DATA / 'functional.h5'}", f"--lrp-inputs={inputs}", "-k", "finite"
    )
    version = keras3_importable()
    if version:  # Python 3.12+ with TensorFlow 2.16+: Keras 3 is installed beside tf_keras
        result.stdout.fnmatch_lines(
            [
                f"lrp: *functional.h5: written by Keras 3.15.1, translated to tf.keras 2; checked against Keras {version} loading the same file*",
            ]
        )
        result.stderr.fnmatch_lines(
            [
                f"ERROR: *functional.h5: predicts other outputs than Keras {version} loading the same file: largest difference *"
            ]
        )
        assert result.ret == pytest.ExitCode.USAGE_ERROR
    else:  # the wrong translation runs: which is why the header says so
        result.stdout.fnmatch_lines(
            [
                "lrp: *functional.h5: written by Keras 3.15.1, translated to tf.keras 2; UNCHECKED: no outputs (y) recorded in the "
                "inputs file and Keras 3 cannot be imported here to compare*"
            ]
        )
        result.assert_outcomes(passed=1)


# --- untrusted archives: one line naming the file, nothing written, nothing run ------------------


def _rewrite(source: Path, target: Path, change) -> Path:
    """A copy of a .keras archive with ``change(members)`` applied to its {name: bytes}."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    change(members)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def _edit_layer(index: int, **changes):
    def change(members):
        config = json.loads(members["config.json"])
        config["config"]["layers"][index].update(changes)
        members["config.json"] = json.dumps(config).encode()

    return change


def _write_bomb(target: Path) -> Path:
    """80 MiB of zeros deflated to 80 KB: refused from the declared sizes, before inflating."""
    with zipfile.ZipFile(DATA / "seq_cnn.keras") as archive:
        members = {name: archive.read(name) for name in ("metadata.json", "config.json")}
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        with archive.open("model.weights.h5", "w") as member:
            block = bytes(1 << 20)
            for _ in range(80):
                member.write(block)
    return target


def _truncated(target: Path) -> Path:
    data = (DATA / "functional.keras").read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def _corrupt_weights(members):
    data = bytearray(members["model.weights.h5"])
    data[:4096] = bytes(4096)
    members["model.weights.h5"] = bytes(data)


def _swap_kernels(members):
    import h5py

    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "a") as store:
        kernel = store["layers/dense/vars/0"][()]
        del store["layers/dense/vars/0"]
        store["layers/dense/vars/0"] = kernel.T
    members["model.weights.h5"] = buffer.getvalue()


def _h5_bomb(target: Path) -> Path:
    """A Keras 3 .h5 whose kernel declares 512 MiB, gzip-compressed and never written: a few KB on disk."""
    import h5py

    shutil.copy(DATA / "seq_cnn.h5", target)
    with h5py.File(target, "a") as file:
        group = file["model_weights/dense/seq_cnn/dense"]
        del group["kernel"]
        group.create_dataset(
            "kernel", shape=(1 << 27,), dtype="float32", chunks=(1 << 16,), compression="gzip", fillvalue=0.0
        )
    return target


def _escaping_member(members):
    members["../../escaped.txt"] = b"must never be written anywhere"


def _make_bad(name: str, folder: Path) -> Path:
    seq = DATA / "seq_cnn.keras"
    if name == "custom":
        return _rewrite(
            seq,
            folder / "custom.keras",
            _edit_layer(2, module="my_package.layers", class_name="Doubler", registered_name="Custom>Doubler"),
        )
    if name == "lambda":
        return _rewrite(seq, folder / "lambda.keras", _edit_layer(3, class_name="Lambda"))
    if name == "unsupported":
        return _rewrite(seq, folder / "lstm.keras", _edit_layer(4, class_name="LSTM"))
    if name == "lora":
        return _rewrite(seq, folder / "lora.keras", lambda m: _set_option(m, 4, "lora_rank", 4))
    if name == "bomb":
        return _write_bomb(folder / "bomb.keras")
    if name == "h5-bomb":
        return _h5_bomb(folder / "h5bomb.h5")
    if name == "truncated":
        return _truncated(folder / "truncated.keras")
    if name == "not-json":
        return _rewrite(seq, folder / "notjson.keras", lambda m: m.update({"config.json": b"{layers: ["}))
    if name == "no-weights":
        return _rewrite(seq, folder / "noweights.keras", lambda m: m.pop("model.weights.h5"))
    if name == "corrupt-weights":
        return _rewrite(seq, folder / "corrupt.keras", _corrupt_weights)
    if name == "transposed":
        return _rewrite(seq, folder / "transposed.keras", _swap_kernels)
    if name == "escaping":
        return _rewrite(
            seq, folder / "escaping.keras", lambda m: _escaping_member(m) or _edit_layer(3, class_name="Lambda")(m)
        )
    raise KeyError(name)


def _set_option(members, index, key, value):
    config = json.loads(members["config.json"])
    config["config"]["layers"][index]["config"][key] = value
    members["config.json"] = json.dumps(config).encode()


BAD_ARCHIVES = {
    "custom": "*custom.keras: layer 'max_pooling2d' (Doubler) is a custom class (Custom>Doubler); its code is not in the file "
    "and pytest-lrp translates only built-in Keras 3 layers",
    "lambda": "*lambda.keras: layer 'flatten' (Lambda) is a Lambda layer: its Python code cannot be carried from Keras 3 to tf.keras 2",
    "unsupported": "*lstm.keras: layer 'dense' (LSTM): pytest-lrp cannot translate this class from Keras 3 to tf.keras 2 "
    "(it translates the layers innvestigate 2.1.2 analyzes)",
    "lora": "*lora.keras: layer 'dense' (Dense): option lora_rank=4 of Keras 3 has no equivalent in tf.keras 2",
    "bomb": "*bomb.keras: model.weights.h5 would inflate from * to 83886080 bytes; refusing a possible zip bomb "
    "(Keras stores its members uncompressed)",
    "h5-bomb": "*h5bomb.h5: weights dense/seq_cnn/dense/kernel declare 536870912 bytes in a file of *; refusing a possible HDF5 bomb",
    "truncated": "*truncated.keras: a damaged or truncated .keras archive (*)",
    "not-json": "*notjson.keras: config.json is not valid JSON",
    "no-weights": "*noweights.keras: a .keras archive without model.weights.h5 (*)",
    "corrupt-weights": "*corrupt.keras: model.weights.h5 in the archive is not a readable HDF5 file (*)",
    "transposed": "*transposed.keras: layer 'dense' (Dense): weight 0 has shape (6, 36) in the file, tf.keras 2 expects (36, 6)",
    "escaping": "*escaping.keras: layer 'flatten' (Lambda) is a Lambda layer*",
}


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
def test_bad_keras3_archives_are_one_line_each_naming_the_file(pytester, tmp_path, trusted):
    # Trust changes nothing for a Keras 3 file: its layers are translated, never deserialized.
    cases = ["custom", "lambda", "escaping"] if trusted else list(BAD_ARCHIVES)
    bad = [_make_bad(case, tmp_path) for case in cases]
    (pytester.path / "rules.yaml").write_text(RULE_Z)
    flags = ["--lrp-trust-model"] if trusted else []
    result = pytester.runpytest("rules.yaml", *(f"--lrp-model={path}" for path in bad), "-k", "conservation", *flags)
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # every broken file named, each in its one line, in one run
    assert len([line for line in result.errlines if line.startswith("ERROR: ")]) == len(bad)
    for case in cases:
        result.stderr.fnmatch_lines(
            ["ERROR: " + BAD_ARCHIVES[case] + (" (the model: *" if not BAD_ARCHIVES[case].endswith("*") else "")]
        )
    text = result.stdout.str()
    assert "Traceback" not in text and "site-packages" not in text
    # Extracting the member would have written it two folders above where pytest ran, or above the archive.
    assert (
        not (pytester.path.parent.parent / "escaped.txt").exists()
        and not (tmp_path.parent.parent / "escaped.txt").exists()
    )
