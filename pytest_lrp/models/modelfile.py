"""Loading a model file once, and rebuilding it inside a fresh TensorFlow graph.

innvestigate 2.x needs graph mode. Loading a `.keras` file inside a graph
silently gives fresh, untrained weights, and a SavedModel folder fails to
predict there (measured; see the project notes). So every file is loaded the
normal (eager) way once, and each analysis rebuilds the model from its config
and weights inside its own graph; `check_same_outputs` then proves the rebuilt
copy is the model in the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..base.errors import LrpUsageError, shown
from ..base.lazy import np
from ..base.tf_runtime import tensorflow
from .keras3 import load_keras3_model
from .keras3_archive import is_keras3, keras_version_of
from .supported import check_softmax_only_at_the_end
from .trust import check_before_loading, deserialization_scope

# Graph and eager kernels may differ in summation order; anything beyond float32
# noise means different weights.
SAME_OUTPUT_RTOL = 1e-4


@dataclass
class ModelFile:
    path: Path
    name: str
    keras_model: object = field(repr=False)
    config: dict = field(repr=False)
    weights: list = field(repr=False)
    sequential: bool
    trusted: bool = False  # rebuilding a trusted model may deserialize its Lambda layers
    # The numpy reference's copy (or why it cannot have one), built once by engine/reference_run.py.
    reference_model: object = field(default=None, repr=False)
    keras3_version: str | None = None  # a Keras 3 file, translated to tf.keras 2 (keras3.py)
    # analyzer -> notes on innvestigate model checks overridden for it (engine/upstream_fixes.py), for the reports.
    check_overrides: dict = field(default_factory=dict, repr=False)

    def notes_for(self, rule) -> list:
        """What the reports say about the analysis of ``rule`` on this model beyond its numbers."""
        if rule.params.get("disable_model_checks"):
            return []  # the user's own choice: innvestigate never ran its checks
        return list(self.check_overrides.get(rule.analyzer, []))

    @property
    def input_shape(self) -> tuple:
        return tuple(self.keras_model.input_shape)

    @property
    def output_shape(self) -> tuple:
        return tuple(self.keras_model.output_shape)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs of the model as loaded from the file (eagerly, final activation included).

        Building any model in a TensorFlow graph (every analysis does) invalidates Keras models loaded eagerly
        before ("Your Layer or Model is in an invalid state"); the outputs then come from a copy rebuilt with the
        file's weights in a graph of its own."""
        try:
            return np.asarray(self.keras_model(x, training=False))
        except ValueError as exc:
            if "invalid state" not in str(exc):
                raise
        tf = tensorflow()
        graph = tf.Graph()
        with graph.as_default(), tf.compat.v1.Session(graph=graph):
            return np.asarray(self.rebuild().predict(x, verbose=0))

    def rebuild(self, config: dict | None = None):
        """A copy of the model in the current (graph) context, with the file's weights.

        ``config`` replaces the file's config for building it (the same layers, other initial values)."""
        keras = tensorflow().keras
        cls = keras.Sequential if self.sequential else keras.Model
        with deserialization_scope(self.trusted):
            model = cls.from_config(self.config if config is None else config)
        model.set_weights(self.weights)
        return model

    def check_same_outputs(self, rebuilt_outputs: np.ndarray, reference: np.ndarray) -> None:
        # An overflowing model gives inf (or NaN) in both copies; only where both
        # are finite do the values have to be close.
        same_non_finite = (rebuilt_outputs == reference) | (np.isnan(rebuilt_outputs) & np.isnan(reference))
        finite = np.isfinite(reference) & np.isfinite(rebuilt_outputs)
        if not np.all(same_non_finite | finite):
            difference = float("inf")
        else:
            difference = float(np.max(np.abs(rebuilt_outputs - reference)[finite], initial=0.0))
        scale = float(np.max(np.abs(reference)[np.isfinite(reference)], initial=0.0))
        if not np.isfinite(difference) or difference > SAME_OUTPUT_RTOL * (1.0 + scale):
            raise LrpUsageError(
                f"{shown(self.path)}: the copy of the model rebuilt for analysis predicts differently from the file "
                f"loaded normally (max difference {difference:.3g}); refusing to explain a model with other weights"
            )


def load_model_file(path: Path, name: str, trusted: bool = False) -> ModelFile:
    path = Path(path)
    if not path.exists():
        raise LrpUsageError(f"{shown(path)}: model file not found")
    tf = tensorflow()
    if not tf.executing_eagerly():
        # Under a global disable_eager_execution() a .keras file loads with untrained weights.
        raise LrpUsageError(
            f"{shown(path)}: TensorFlow eager execution is disabled in this process; pytest-lrp runs the analyses in their "
            "own graphs, so remove the global tf.compat.v1.disable_eager_execution() call"
        )
    version = keras_version_of(path)
    if is_keras3(version):
        # Translated from its JSON config, never deserialized by Keras: no code in the file runs, trusted or not.
        model = load_keras3_model(path)
    else:
        model = _load_tf_keras(tf, path, trusted)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise LrpUsageError(
            f"{shown(path)}: the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
            "pytest-lrp supports models with one input and one output"
        )
    check_softmax_only_at_the_end(model, path)
    try:
        config = model.get_config()
    except Exception as exc:
        raise LrpUsageError(f"{shown(path)}: the model has no config to rebuild it from ({_first_line(exc)})") from None
    return ModelFile(
        path=path,
        name=name,
        keras_model=model,
        config=config,
        weights=model.get_weights(),
        sequential=isinstance(model, tf.keras.Sequential),
        trusted=trusted,
        keras3_version=version if is_keras3(version) else None,
    )


def _load_tf_keras(tf, path: Path, trusted: bool):
    check_before_loading(path, trusted)
    try:
        # safe_mode (used for .keras only) refuses Lambda bytecode; trust lifts it.
        return tf.keras.models.load_model(str(path), compile=False, safe_mode=not trusted)
    except Exception as exc:  # h5py, keras and TF raise many unrelated types for a bad file
        raise LrpUsageError(
            f"{shown(path)}: cannot be loaded as a Keras model ({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
