"""The inputs the analyzers explain: from a .npy/.npz file, or seeded random.

An .npz may also carry ``y``, the model's outputs recorded where it was trained;
fidelity.py checks the loaded model against them.
"""

from __future__ import annotations

from pathlib import Path

from ..base.errors import LrpUsageError, shown
from ..base.lazy import np

DEFAULT_RANDOM_SAMPLES = 8


def load_inputs(path: Path | None, input_shape: tuple | None, samples: int | None, seed: int) -> np.ndarray:
    if path is None:
        assert input_shape is not None, "random inputs need the model's input shape"
        return random_inputs(input_shape, samples or DEFAULT_RANDOM_SAMPLES, seed)
    x = _read_array(Path(path))
    if x.ndim == 0 or x.shape[0] == 0:
        raise LrpUsageError(f"{shown(path)}: holds no samples (shape {x.shape})")
    if samples is not None:
        if samples > x.shape[0]:
            raise LrpUsageError(f"{shown(path)}: {samples} samples asked for, but the file holds {x.shape[0]}")
        x = x[:samples]
    if input_shape is not None and not _fits(x.shape, input_shape):
        raise LrpUsageError(
            f"{shown(path)}: inputs of shape {x.shape} do not fit the model's input shape {_shape(input_shape)}"
        )
    if not np.issubdtype(x.dtype, np.number):
        raise LrpUsageError(f"{shown(path)}: inputs must be numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)))
        raise LrpUsageError(f"{shown(path)}: {bad} of {len(x)} samples contain NaN or Inf")
    return x


def random_inputs(input_shape: tuple, samples: int, seed: int) -> np.ndarray:
    dims = tuple(d if d is not None else 1 for d in input_shape[1:])
    return np.random.default_rng(seed).random((samples, *dims), dtype=np.float32)


def read_arrays(path: Path):
    """The array of an .npy, or {name: array} of an .npz; a missing or unreadable file is one line."""
    if not path.exists():
        raise LrpUsageError(f"{shown(path)}: inputs file not found")
    try:
        # allow_pickle=False: an input file must never run code.
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise LrpUsageError(f"{shown(path)}: cannot be read as .npy or .npz ({type(exc).__name__}: {exc})") from None
    if isinstance(data, np.ndarray):
        return data
    with data:
        return {name: data[name] for name in data.files}


def _read_array(path: Path) -> np.ndarray:
    data = read_arrays(path)
    if isinstance(data, np.ndarray):
        return data
    if "x" in data:
        return data["x"]
    if len(data) == 1:
        return next(iter(data.values()))
    raise LrpUsageError(
        f"{shown(path)}: has arrays {list(data)}; name the inputs 'x' (and recorded outputs 'y') or keep only one array"
    )


def recorded_outputs(path: Path | None, count: int) -> np.ndarray | None:
    """The array ``y`` of an inputs .npz (its first ``count`` samples), or None when there is none."""
    if path is None or Path(path).suffix != ".npz":
        return None
    with np.load(path, allow_pickle=False) as data:
        if "y" not in data.files:
            return None
        y = data["y"]
    if y.ndim == 0 or y.shape[0] < count:
        raise LrpUsageError(
            f"{shown(path)}: the recorded outputs y hold {0 if y.ndim == 0 else y.shape[0]} samples, x {count}"
        )
    return y[:count]


def _fits(shape: tuple, input_shape: tuple) -> bool:
    expected = tuple(input_shape[1:])
    got = tuple(shape[1:])
    return len(got) == len(expected) and all(e is None or e == g for e, g in zip(expected, got))


def _shape(input_shape: tuple) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in input_shape) + ")"
