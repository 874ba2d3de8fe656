"""Golden heatmaps: the `baseline` check compares an analysis with the stored heatmaps of its (model, rule).

A baseline is `<folder>/<model name>/<rule id>.npz` holding the array `heatmaps` and
`metadata`, a JSON string: the hashes of the model file and of the inputs, the rule
and the versions of tensorflow, keras and innvestigate (torch, zennit and captum for a PyTorch
model, whose hash is that of its parameters). Nothing is written unless
--lrp-update-baselines is given; every write goes through a temporary file and a
rename, so a killed run never leaves a truncated baseline.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

from ..base.atomic import write_atomically
from ..base.errors import LrpCheckFailed, shown
from ..base.lazy import np
from ..base.tf_runtime import distribution_version, tensorflow_release
from .properties import HeatmapDifference

FOLDER = "lrp_baselines"
UPDATE_FLAG = "--lrp-update-baselines"
FORMAT = 1
# Recorded in item.user_properties: those travel with the test report to the
# pytest-xdist controller, which prints the terminal summary.
WRITTEN = "lrp_baseline_written"
VERSIONED = ("tensorflow", "keras", "innvestigate")
VERSIONED_TORCH = ("torch", "zennit", "captum")  # for a PyTorch model
RULE_FIELDS = ("analyzer", "params", "target", "neuron_selection")


class Unreadable(Exception):
    pass


def baseline_path(settings, rules_path: Path, analysis) -> Path:
    """<folder>/<model name>/<rule id>.npz; the model name is the stem, or folder.stem where stems collide."""
    folder = settings.path("lrp_baselines") or rules_path.parent / FOLDER
    return folder / analysis.model.name / f"{analysis.rule.id}.npz"


def check_baseline(analysis, item, settings, rules_path: Path) -> None:
    """``settings`` (config.options.Settings) and the rule file say where baselines live and whether to update them."""
    path = baseline_path(settings, rules_path, analysis)
    current = record(analysis)
    update = settings.flag("lrp_update_baselines")
    problem = _problem(analysis, path, current, settings if not update else None)
    if problem is None:
        return
    kind, message = problem
    if update:
        write_baseline(path, analysis.heatmaps, current)
        item.user_properties.append((WRITTEN, f"{shown(path)} ({kind})"))
        return
    raise LrpCheckFailed(message)


def record(analysis) -> dict:
    """The metadata stored with a baseline; the hashes tell whether a comparison is meaningful."""
    rule = analysis.rule
    return {
        "format": FORMAT,
        "model": analysis.model.name,
        # A PyTorch module is code, not a file: its digest is its parameters' and buffers' (pytorch/loading.py).
        "model_sha256": analysis.model.digest()
        if hasattr(analysis.model, "digest")
        else file_digest(Path(analysis.model.path)),
        "inputs_sha256": hashlib.sha256(np.ascontiguousarray(analysis.inputs).tobytes()).hexdigest(),
        "inputs_shape": list(analysis.inputs.shape),
        "rule": rule.id,
        "analyzer": rule.analyzer,
        "params": json.loads(json.dumps(rule.params, sort_keys=True, default=repr)),
        "target": rule.target,
        "neuron_selection": rule.neuron_selection,
        "versions": {
            name: tensorflow_release() if name == "tensorflow" else distribution_version(name)
            for name in (VERSIONED_TORCH if hasattr(analysis.model, "digest") else VERSIONED)
        },
    }


def write_baseline(path: Path, heatmaps: np.ndarray, meta: dict) -> Path:
    text = json.dumps(meta, sort_keys=True)
    path = write_atomically(
        path, lambda f: np.savez_compressed(f, heatmaps=np.asarray(heatmaps), metadata=np.array(text))
    )
    # The temporary file was private (0600); a baseline is shared like any source file.
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)
    return path


def read_baseline(path: Path):
    """(heatmaps, metadata); None when there is no file; Unreadable when it is not a baseline."""
    if not path.exists():
        return None
    try:
        # allow_pickle=False: a baseline file must never run code.
        with np.load(path, allow_pickle=False) as data:
            return np.asarray(data["heatmaps"]), json.loads(str(data["metadata"]))
    except KeyError as exc:
        raise Unreadable(f"no array {exc} in it") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # JSONDecodeError is a ValueError
        raise Unreadable(f"{type(exc).__name__}: {exc}") from None


def _problem(analysis, path: Path, current: dict, settings):
    """None when the heatmaps match the baseline; else (kind, message). ``settings``: None to write no image."""
    rule, model = analysis.rule, analysis.model.name
    try:
        stored = read_baseline(path)
    except Unreadable as exc:
        return "unreadable", f"baseline {shown(path)} cannot be read ({exc}); {UPDATE_FLAG} writes it anew"
    if stored is None:
        return "new", (
            f"no baseline for rule '{rule.id}' on {model}: {shown(path)} does not exist; "
            f"run pytest with {UPDATE_FLAG} to write it from the current heatmaps"
        )
    heatmaps, meta = stored
    if heatmaps.shape == analysis.heatmaps.shape:
        difference = HeatmapDifference(heatmaps, analysis.heatmaps, rule.baseline_tolerance)
        if difference.within:
            return None
    else:
        difference = None
    changed = _changed_sources(meta, current)
    if changed:
        return "changed", (
            f"heatmaps differ from the baseline {shown(path)}, but it was recorded for {' and for '.join(changed)}, "
            f"so a comparison would mean nothing ({rule.analyzer} on {model}); if the change is intended, "
            f"run with {UPDATE_FLAG} to record the current heatmaps"
        )
    if difference is None:
        return "changed", (
            f"heatmaps of shape {analysis.heatmaps.shape} but the baseline {shown(path)} holds shape {heatmaps.shape} "
            f"({rule.analyzer} on {model}); if the change is intended, run with {UPDATE_FLAG}"
        )
    return "changed", _mismatch_message(analysis, path, difference, meta, current, settings)


def _changed_sources(meta: dict, current: dict) -> list:
    changed = []
    if meta.get("model_sha256") != current["model_sha256"]:
        changed.append(
            f"another model file (sha256 {_short(meta.get('model_sha256'))}..., now {_short(current['model_sha256'])}...)"
        )
    if meta.get("inputs_sha256") != current["inputs_sha256"]:
        changed.append(
            f"other inputs (sha256 {_short(meta.get('inputs_sha256'))}... of shape {_shape(meta.get('inputs_shape'))}, "
            f"now {_short(current['inputs_sha256'])}... of shape {_shape(current['inputs_shape'])})"
        )
    return changed


def _mismatch_message(analysis, path: Path, difference: HeatmapDifference, meta: dict, current: dict, settings) -> str:
    rule = analysis.rule
    lines = [
        f"heatmaps differ from the baseline {shown(path)} ({rule.analyzer} on {analysis.model.name}; "
        f"baseline_tolerance {rule.baseline_tolerance})",
        difference.describe("baseline", "current", "outside the tolerance"),
    ]
    for what in (_rule_change(meta, current), _version_change(meta, current)):
        if what:
            lines.append(what)
    image = _write_image(settings, analysis, difference) if settings is not None else None
    if image is not None:
        lines.append(f"baseline / current / difference image: {shown(image)}")
    lines.append(f"if the change is intended, run with {UPDATE_FLAG} to accept the current heatmaps")
    return "\n".join(lines)


def _rule_change(meta: dict, current: dict) -> str | None:
    changed = [f"{key} {meta.get(key)!r}, now {current[key]!r}" for key in RULE_FIELDS if meta.get(key) != current[key]]
    return "the rule changed since the baseline was recorded: " + "; ".join(changed) if changed else None


def _version_change(meta: dict, current: dict) -> str | None:
    before, now = meta.get("versions", {}), current["versions"]
    if before == now:
        return None
    describe = lambda versions: ", ".join(f"{name} {versions.get(name)}" for name in now)  # noqa: E731
    return f"the baseline was recorded with {describe(before)}; now {describe(now)}"


def _write_image(settings, analysis, difference: HeatmapDifference) -> Path | None:
    folder = settings.path("lrp_heatmaps")
    if folder is None:
        return None
    from .baseline_images import write_comparison_image

    model, rule = analysis.model.name, analysis.rule.id
    return write_comparison_image(folder / "baselines" / model / f"{rule}.png", difference, title=f"{rule} on {model}")


def file_digest(path: Path) -> str:
    """sha256 of a model file, or of a SavedModel folder's files and their relative names.

    Not cached: a model file may be replaced between runs of one process (pytester).
    """
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            digest.update(p.relative_to(path).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _short(digest) -> str:
    return str(digest)[:12]


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape or ()) + ")"
