"""Is the model being explained the model that was trained? Checked against recorded outputs.

A model can load without an error and still be another model: a Keras 3 file translated
with a transposed square kernel, a `.keras` file loaded with fresh weights. An inputs
`.npz` may therefore carry, beside `x`, the outputs the model gave where it was trained:
`y = model.predict(x)`, final activation (softmax) included, as saved. When `y` is there,
the loaded model must reproduce it, or every test of that model errors with the largest
difference. Without `y`, a Keras 3 file is compared with Keras 3 itself loading the same
file when Keras 3 can be imported here; otherwise the report header says the translation
is unchecked.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from ..base.errors import LrpUsageError, shown
from ..base.lazy import np
from .inputs import recorded_outputs
from .keras3_archive import first_line, is_keras3, keras_version_of

# float32 noise across backends (Keras 3 on JAX vs tf.keras 2 on TensorFlow) and summation
# orders stays orders of magnitude below this; a wrong weight layout differs by ~the output
# scale itself.
RTOL = 1e-4
ATOL = 1e-5


def check_outputs(model, x: np.ndarray, inputs_path: Path | None) -> None:
    """Raise a one-line LrpUsageError unless `model` reproduces the recorded (or Keras 3's own) outputs."""
    y = recorded_outputs(inputs_path, len(x))
    source = f"those recorded in {shown(inputs_path)} (y)"
    if y is None and model.keras3_version is not None:
        y = original_keras3_outputs(model.path, x)
        source = f"Keras {keras3_importable()} loading the same file"
    if y is None:
        return
    predicted = np.asarray(model.predict(x))
    if y.shape != predicted.shape:
        raise LrpUsageError(
            f"{shown(inputs_path)}: the recorded outputs y have shape {y.shape}, the model predicts {predicted.shape} "
            "(y is read as model.predict(x) recorded where the model was trained; store class labels under another name)"
        )
    y = y.astype(np.float64)
    difference = np.abs(predicted - y)
    tolerance = ATOL + RTOL * float(np.max(np.abs(y), initial=0.0))
    if not np.all(difference <= tolerance):  # NaN included
        worst = int(np.nanargmax(difference.reshape(len(x), -1).max(axis=1))) if np.any(np.isfinite(difference)) else 0
        raise LrpUsageError(
            f"{shown(model.path)}: predicts other outputs than {source}: largest difference "
            f"{float(np.nanmax(difference)):.3g} at sample {worst} (tolerance {tolerance:.3g}); "
            "refusing to explain another model than the one that was recorded"
        )


def keras3_importable() -> str | None:
    """The version of an installed Keras 3 (the `keras` package), without importing it."""
    try:
        version = importlib.metadata.version("keras")
    except importlib.metadata.PackageNotFoundError:
        return None
    return version if is_keras3(version) else None


def original_keras3_outputs(path: Path, x: np.ndarray) -> np.ndarray | None:
    """Outputs of the file as Keras 3 itself loads it (safe mode), or None when Keras 3 is not installed."""
    if keras3_importable() is None:
        return None
    try:
        import keras

        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
        return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
    except Exception as exc:  # any failure of the other Keras: say so, do not explain unchecked
        raise LrpUsageError(
            f"{shown(path)}: Keras {keras3_importable()} is installed but cannot load this file to check its translation "
            f"({type(exc).__name__}: {first_line(exc)}); record the outputs as y in the inputs file instead"
        ) from None


def header_lines(model_paths: list, inputs_path: Path | None) -> list:
    """One report-header line per Keras 3 model file: translated, and how (or whether) that was checked."""
    lines = []
    has_y = None
    for path in model_paths:
        try:
            version = keras_version_of(path) if Path(path).is_file() else None
        except LrpUsageError:
            continue  # the model's tests report it
        if not is_keras3(version):
            continue
        if has_y is None:
            has_y = _has_y(inputs_path)
        if has_y:
            how = f"checked against the outputs (y) in {shown(inputs_path)}"
        elif keras3_importable():
            how = f"checked against Keras {keras3_importable()} loading the same file (no outputs y recorded)"
        else:
            how = (
                "UNCHECKED: no outputs (y) recorded in the inputs file and Keras 3 cannot be imported here to compare "
                "(README: Supported model formats)"
            )
        lines.append(f"lrp: {shown(path)}: written by Keras {version}, translated to tf.keras 2; {how}")
    return lines


def _has_y(inputs_path: Path | None) -> bool:
    if inputs_path is None or Path(inputs_path).suffix != ".npz" or not Path(inputs_path).is_file():
        return False
    try:
        with np.load(inputs_path, allow_pickle=False) as data:
            return "y" in data.files
    except Exception:  # a broken inputs file is its tests' error, not the header's
        return False
