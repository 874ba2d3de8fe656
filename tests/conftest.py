"""Shared, expensive things for the plugin's own tests: TensorFlow and tiny models on disk.

The tests run pytest in-process with `pytester`, which restores sys.modules
after every inner run; TensorFlow and innvestigate are imported here once,
before any inner run, so they are kept (re-importing TensorFlow in one process
is not possible) and every inner run shares the same import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers.conv_cnn import conv_cnn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# As the plugin does before a model file runs (transformer/runtime.py): the tests that import transformers
# themselves must not make it import TensorFlow, which would then come before torch's triton.
os.environ.setdefault("USE_TF", "0")

INPUT_DIM = 5
# The markers of the expensive groups (pyproject.toml): a plain `pytest` leaves them out.
EXPENSIVE = ("browser", "default_suite", "wheel", "xdist", "slow")


def pytest_collection_modifyitems(config, items):
    """Without `-m`, and unless tests are named by node id, deselect the tests of the expensive groups.

    `-m` on the command line chooses instead (`-m slow`, `-m "not browser"`, `-m ""` for everything);
    .ci/run runs the default selection, then `-m "browser or default_suite or wheel or xdist or slow"`.
    """
    if _markers_chosen(config) or any("::" in arg for arg in config.args):
        return
    kept, expensive = [], []
    for item in items:
        (expensive if any(item.get_closest_marker(name) for name in EXPENSIVE) else kept).append(item)
    if expensive:
        config.hook.pytest_deselected(items=expensive)
        items[:] = kept
        config.stash[_deselected] = len(expensive)


_deselected = pytest.StashKey[int]()


def _markers_chosen(config) -> bool:
    """Whether the command line (or PYTEST_ADDOPTS) has `-m`, even `-m ""` (which selects everything)."""
    args = [*config.invocation_params.args, *os.environ.get("PYTEST_ADDOPTS", "").split()]
    return bool(config.getoption("markexpr")) or any(
        arg == "-m" or (arg.startswith("-m") and not arg.startswith("--")) for arg in args
    )


def pytest_terminal_summary(terminalreporter, config):
    count = config.stash.get(_deselected, 0)
    if count:
        terminalreporter.write_line(
            f"{count} expensive tests deselected ({', '.join(EXPENSIVE)}); "
            f'-m "{" or ".join(EXPENSIVE)}" runs them, -m "" runs everything'
        )


@dataclass
class DenseNet:
    """A saved ReLU network and its weights, for independent numpy computations."""

    path: Path
    kernels: list
    biases: list

    def forward(self, x: np.ndarray) -> list:
        """Activations of every layer, input first, pre-softmax output last."""
        activations = [x.astype(np.float64)]
        for i, (w, b) in enumerate(zip(self.kernels, self.biases)):
            z = activations[-1] @ w + b
            activations.append(np.maximum(z, 0) if i < len(self.kernels) - 1 else z)
        return activations

    def outputs(self, x):
        return self.forward(x)[-1]

    def lrp_z(self, x: np.ndarray) -> np.ndarray:
        """The z rule (bias in the denominator) for the max-activation output, in numpy."""
        activations = self.forward(x)
        out = activations[-1]
        relevance = np.zeros_like(out)
        rows = np.arange(len(x))
        relevance[rows, out.argmax(axis=1)] = out[rows, out.argmax(axis=1)]
        for w, b, a in reversed(list(zip(self.kernels, self.biases, activations[:-1]))):
            z = a @ w + b
            safe = np.where(z >= 0, z + 1e-7, z - 1e-7)
            relevance = a * ((relevance / safe) @ w.T)
        return relevance


@pytest.fixture(autouse=True)
def wide_terminal_for_inner_runs(request, monkeypatch):
    """Inner pytest runs (pytester) print to 500 columns, whatever terminal the outer run has:
    pytest-lrp wraps its report and its failure details to the width, and the tests read those
    lines whole. The tests of the width itself set COLUMNS (test_reports.py)."""
    if "pytester" in request.fixturenames:
        monkeypatch.setenv("COLUMNS", "500")


@pytest.fixture(scope="session", autouse=True)
def tensorflow_imported_once():
    # Through the plugin's one import site: under TensorFlow >= 2.16 it makes tf.keras
    # Keras 2 (tf_keras), as it does in the runs these tests drive.
    # The PyTorch environment (tests/test_pytorch.py) may have neither.
    from pytest_lrp.base.tf_runtime import innvestigate, tensorflow

    try:
        innvestigate()
    except ImportError:
        return None
    return tensorflow()


def _save_dense(tf, folder: Path, name: str, bias: bool, seed: int, formats=(".h5",)) -> DenseNet:
    rng = np.random.default_rng(seed)
    sizes = [INPUT_DIM, 8, 6, 3]
    kernels = [rng.normal(0, 0.7, (a, b)).astype(np.float32) for a, b in zip(sizes, sizes[1:])]
    biases = [(rng.normal(0, 0.3, b) if bias else np.zeros(b)).astype(np.float32) for b in sizes[1:]]
    layers = tf.keras.layers
    model = tf.keras.Sequential(
        [
            layers.Dense(8, activation="relu", use_bias=bias, input_shape=(INPUT_DIM,)),
            layers.Dense(6, activation="relu", use_bias=bias),
            layers.Dense(3, use_bias=bias),
            layers.Activation("softmax"),
        ]
    )
    weights = [w for pair in zip(kernels, biases) for w in (pair if bias else pair[:1])]
    model.set_weights(weights)
    paths = {}
    for ext in formats:
        path = folder / f"{name}{ext}" if ext else folder / f"{name}_savedmodel"
        model.save(path) if ext != ".h5" else model.save(path, include_optimizer=False)
        paths[ext] = path
    net = DenseNet(paths[formats[0]], kernels, biases)
    net.paths = paths
    return net


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tensorflow_imported_once):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def bias_free_net(model_dir, tensorflow_imported_once) -> DenseNet:
    return _save_dense(tensorflow_imported_once, model_dir, "nobias", bias=False, seed=1)


@pytest.fixture(scope="session")
def biased_net(model_dir, tensorflow_imported_once) -> DenseNet:
    return _save_dense(tensorflow_imported_once, model_dir, "biased", bias=True, seed=2, formats=(".h5", ".keras", ""))


@pytest.fixture(scope="session")
def inputs_file(model_dir) -> Path:
    x = np.random.default_rng(3).uniform(0, 1, (6, INPUT_DIM)).astype(np.float32)
    path = model_dir / "inputs.npz"
    np.savez(path, x=x)
    return path


@pytest.fixture(scope="session")
def conv_nets(model_dir, tensorflow_imported_once) -> dict:
    """Two small ReLU CNNs (helpers/conv_cnn.py) saved as .h5: 'bias_free', and 'biased' with the same kernels plus
    biases."""
    paths = {}
    for name, bias in (("bias_free", False), ("biased", True)):
        paths[name] = model_dir / f"conv_{name}.h5"
        conv_cnn(tensorflow_imported_once, bias).save(paths[name])
    return paths


@pytest.fixture(scope="session")
def inputs_8x8(model_dir) -> Path:
    path = model_dir / "inputs_8x8.npz"
    np.savez(path, x=np.random.default_rng(8).uniform(0, 1, (4, 8, 8, 1)).astype(np.float32))
    return path


@pytest.fixture
def lrp_project(pytester, bias_free_net, biased_net, inputs_file):
    """A pytester folder with a rule file writer; models and inputs are absolute paths."""

    class Project:
        path = pytester.path
        nobias = bias_free_net
        biased = biased_net
        inputs = inputs_file

        @staticmethod
        def rules(text: str, name: str = "rules.yaml") -> Path:
            path = pytester.path / name
            path.write_text(text)
            return path

    return Project
