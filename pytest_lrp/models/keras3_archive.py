"""Reading what a Keras 3 model file holds (config, version, weights) without Keras 3, and safely.

Two formats: the ``.keras`` zip (``metadata.json``, ``config.json``, ``model.weights.h5``)
and the legacy HDF5 file Keras 3 writes for a ``.h5`` name. Both are untrusted input:
no member name is ever used as a path on disk (members are read into memory and the
weights opened by h5py from a BytesIO), every member's declared size is checked before
it is decompressed, and whatever is malformed ends as one line naming the file.

The weights layout follows Keras 3.x's own writers (read in keras-team/keras,
``keras/src/saving/saving_lib.py`` and ``keras/src/legacy/saving/legacy_h5_format.py``):
- ``.keras``: ``layers/<class in snake case>[_<n>]/vars/<i>``, numbered per class in the
  order of ``model.layers`` (not by layer name); Keras >= 3.9 also stores the layer's
  name as an attribute of the ``vars`` group, which is checked when present.
- ``.h5``: ``model_weights/<layer name>/`` with the attribute ``weight_names`` giving the
  datasets in ``get_weights()`` order.
No TensorFlow here.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..base.errors import LrpUsageError, shown
from ..base.lazy import np

CONFIG = "config.json"
METADATA = "metadata.json"
WEIGHTS = "model.weights.h5"
# Keras writes its archive members uncompressed (stored): a member that inflates far
# beyond what it occupies in the file is a zip bomb, not a model. Keras 3 itself refuses
# above 100x and 4 GiB (saving_lib._reject_zip_bomb); pytest-lrp reads members into
# memory, so its floor is lower.
MAX_EXPANSION = 100
BOMB_FLOOR_BYTES = 64 << 20
MAX_JSON_BYTES = 64 << 20
MODEL_CLASSES = ("Sequential", "Functional", "Model")


@dataclass
class Keras3File:
    path: Path
    keras_version: str
    config: dict = field(repr=False)  # {"class_name": ..., "config": {...}} as Keras 3 wrote it
    weights: dict = field(repr=False)  # layer name -> list of arrays in get_weights() order


def keras_version_of(path: Path) -> str | None:
    """The Keras version that wrote a .keras or HDF5 model file, or None when it does not say.

    Cheap (no weights are read), so that it can decide which loader a file needs.
    """
    path = Path(path)
    if path.is_dir():
        return None
    if zipfile.is_zipfile(path):
        with _open_zip(path) as archive:
            if METADATA not in archive.namelist():
                return None
            metadata = _json_member(path, archive, METADATA)
        version = metadata.get("keras_version") if isinstance(metadata, dict) else None
        return str(version) if version is not None else None
    if path.suffix == ".keras":
        # A truncated archive has lost its central directory, at the end of the file.
        raise LrpUsageError(f"{shown(path)}: a damaged or truncated .keras archive (no zip directory at its end)")
    import h5py

    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as file:
                version = file.attrs.get("keras_version")
        except (OSError, ValueError) as exc:
            raise LrpUsageError(f"{shown(path)}: a damaged HDF5 file ({first_line(exc)})") from None
        if isinstance(version, bytes):
            version = version.decode("utf-8", "replace")
        return str(version) if version is not None else None
    return None


def is_keras3(version: str | None) -> bool:
    major = re.match(r"\s*(\d+)", version or "")
    return bool(major) and int(major.group(1)) >= 3


def read_keras3_file(path: Path, check_config: Callable[[dict], object] = lambda config: None) -> Keras3File:
    """Config and weights of a Keras 3 file; a one-line LrpUsageError for anything malformed.

    ``check_config`` vets the config before any weights are read: the weights are found
    through the layers the config lists.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _read_archive(path, check_config)
    return _read_legacy_h5(path, check_config)


def _read_archive(path: Path, check_config) -> Keras3File:
    with _open_zip(path) as archive:
        names = archive.namelist()
        for member in (METADATA, CONFIG, WEIGHTS):
            if member not in names:
                also = (
                    " (Keras 3 can also store weights as model.weights.npz; save with the default format)"
                    if member == WEIGHTS
                    else ""
                )
                raise LrpUsageError(f"{shown(path)}: a .keras archive without {member}{also}")
        metadata = _json_member(path, archive, METADATA)
        config = _json_member(path, archive, CONFIG)
        weights_bytes = _member_bytes(path, archive, WEIGHTS)
    if not isinstance(config, dict) or config.get("class_name") not in MODEL_CLASSES:
        raise LrpUsageError(f"{shown(path)}: {CONFIG} does not describe a Sequential or functional model")
    check_config(config)
    import h5py

    try:
        with h5py.File(io.BytesIO(weights_bytes), "r") as store:
            weights = _archive_weights(path, store, config, len(weights_bytes))
    except LrpUsageError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LrpUsageError(
            f"{shown(path)}: {WEIGHTS} in the archive is not a readable HDF5 file ({first_line(exc)})"
        ) from None
    return Keras3File(path, str(metadata.get("keras_version", "3")), config, weights)


def _archive_weights(path: Path, store, config: dict, stored_bytes: int) -> dict:
    """Layer name -> arrays, following Keras 3's per-class numbering of ``model.layers``."""
    weights = {}
    used: dict = {}
    for layer in _model_layers(path, config):
        class_name = str(layer.get("class_name"))
        name = _layer_name(layer)
        key = _unique(_snake_case(class_name), used)
        if class_name in MODEL_CLASSES:
            continue  # nested models are refused by the translation, naming the layer
        group = store.get(f"layers/{key}/vars")
        if group is None:
            weights[name] = []
            continue
        stored_name = group.attrs.get("name")
        if isinstance(stored_name, bytes):
            stored_name = stored_name.decode("utf-8", "replace")
        if stored_name is not None and stored_name != name:
            raise LrpUsageError(
                f"{shown(path)}: {WEIGHTS} holds the weights of layer '{stored_name}' where layer '{name}' "
                f"({class_name}) was expected (layers/{key}); the weights layout is not one pytest-lrp knows"
            )
        weights[name] = _numbered_arrays(path, group, f"layers/{key}/vars", stored_bytes)
    return weights


def _numbered_arrays(path: Path, group, where: str, stored_bytes: int) -> list:
    count = len(group.keys())
    arrays = []
    for i in range(count):
        dataset = group.get(str(i))
        if dataset is None or not hasattr(dataset, "shape"):
            raise LrpUsageError(f"{shown(path)}: {WEIGHTS} has no array {where}/{i} (expected 0..{count - 1})")
        arrays.append(_array(path, dataset, f"{where}/{i}", stored_bytes))
    return arrays


def _read_legacy_h5(path: Path, check_config) -> Keras3File:
    import h5py

    try:
        with h5py.File(path, "r") as file:
            version = file.attrs.get("keras_version")
            raw = file.attrs.get("model_config")
            if raw is None:
                raise LrpUsageError(
                    f"{shown(path)}: an HDF5 file without a model config (weights only?); save it with model.save()"
                )
            config = _parse_json(path, raw.decode("utf-8") if isinstance(raw, bytes) else str(raw), "model_config")
            if not isinstance(config, dict) or config.get("class_name") not in MODEL_CLASSES:
                raise LrpUsageError(f"{shown(path)}: the stored model_config is not a Sequential or functional model")
            check_config(config)
            group = file.get("model_weights", file)
            weights = {}
            stored_bytes = path.stat().st_size
            for name in _strings(group.attrs.get("layer_names", [])):
                layer_group = group.get(name)
                if layer_group is None:
                    raise LrpUsageError(f"{shown(path)}: model_weights lists layer '{name}' but holds no group for it")
                weights[name] = [
                    _array(path, layer_group[w], f"{name}/{w}", stored_bytes)
                    for w in _strings(layer_group.attrs.get("weight_names", []))
                ]
    except LrpUsageError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LrpUsageError(
            f"{shown(path)}: a damaged Keras 3 HDF5 file ({type(exc).__name__}: {first_line(exc)})"
        ) from None
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    return Keras3File(path, str(version), config, weights)


def _array(path: Path, dataset, where: str, stored_bytes: int) -> np.ndarray:
    """A weights array, its declared size and type checked before it is read.

    A compressed HDF5 dataset can declare gigabytes and store almost nothing (an HDF5 bomb);
    Keras writes its datasets uncompressed, so the zip rule applies to them too.
    """
    if not hasattr(dataset, "dtype") or dataset.dtype.kind not in "fiub":
        raise LrpUsageError(f"{shown(path)}: weights {where} are not a numeric array")
    if dataset.nbytes > BOMB_FLOOR_BYTES and dataset.nbytes > MAX_EXPANSION * max(stored_bytes, 1):
        raise LrpUsageError(
            f"{shown(path)}: weights {where} declare {dataset.nbytes} bytes in a file of {stored_bytes}; refusing a possible HDF5 bomb"
        )
    return np.asarray(dataset[()])


def _model_layers(path: Path, config: dict) -> list:
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list):
        raise LrpUsageError(f"{shown(path)}: the model config has no list of layers")
    return [layer for layer in layers if isinstance(layer, dict)]


def _layer_name(layer: dict) -> str:
    inner = layer.get("config") if isinstance(layer.get("config"), dict) else {}
    return str(inner.get("name", layer.get("name", "?")))


def _snake_case(name: str) -> str:
    # keras.src.utils.naming.to_snake_case, which names the weights' groups.
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _unique(name: str, used: dict) -> str:
    # keras.src.saving.saving_lib._get_unique_name: conv2d, conv2d_1, conv2d_2, ...
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name


def _strings(values) -> list:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


class _open_zip:
    """``zipfile.ZipFile`` whose failures (truncated, not a zip, bad CRC) are one-line LrpUsageErrors."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        try:
            self.archive = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise LrpUsageError(
                f"{shown(self.path)}: a damaged or truncated .keras archive ({first_line(exc)})"
            ) from None
        return self.archive

    def __exit__(self, *exc_info):
        self.archive.close()


def _member_bytes(path: Path, archive: zipfile.ZipFile, member: str, limit: int | None = None) -> bytes:
    """A member's bytes, its declared size checked before a byte is inflated."""
    info = archive.getinfo(member)
    if limit is not None and info.file_size > limit:
        raise LrpUsageError(
            f"{shown(path)}: {member} declares {info.file_size} bytes, more than the {limit} a model's {member} may have"
        )
    if info.file_size > BOMB_FLOOR_BYTES and info.file_size > MAX_EXPANSION * max(info.compress_size, 1):
        raise LrpUsageError(
            f"{shown(path)}: {member} would inflate from {info.compress_size} to {info.file_size} bytes; "
            "refusing a possible zip bomb (Keras stores its members uncompressed)"
        )
    try:
        # ZipExtFile stops at the declared size, and checks the CRC at the end.
        with archive.open(info) as stream:
            return stream.read()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise LrpUsageError(
            f"{shown(path)}: a damaged or truncated .keras archive ({member}: {first_line(exc)})"
        ) from None


def _json_member(path: Path, archive: zipfile.ZipFile, member: str):
    data = _member_bytes(path, archive, member, limit=MAX_JSON_BYTES)
    return _parse_json(path, data.decode("utf-8", "replace"), member)


def _parse_json(path: Path, text: str, what: str):
    try:
        return json.loads(text)
    except ValueError:
        raise LrpUsageError(f"{shown(path)}: {what} is not valid JSON") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
