"""PNG images of inputs beside their heatmaps (--lrp-heatmaps)."""

from __future__ import annotations

import re
from pathlib import Path

from ..base.atomic import write_atomically
from ..base.lazy import np

CELL_INCHES = 1.6
DPI = 100
PAIRS_PER_ROW = 4


def image_name(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid).strip("_") + ".png"


def image_size(samples: int) -> tuple:
    """(width, height) in pixels of the image for that many samples."""
    columns = 2 * min(samples, PAIRS_PER_ROW)
    rows = -(-samples // PAIRS_PER_ROW)
    return round(columns * CELL_INCHES * DPI), round(rows * CELL_INCHES * DPI)


def write_heatmap_image(folder: Path, nodeid: str, analysis) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state shared with the user's tests

    samples = len(analysis.heatmaps)
    width, height = image_size(samples)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    rows = -(-samples // PAIRS_PER_ROW)
    columns = 2 * min(samples, PAIRS_PER_ROW)
    for i in range(samples):
        row, pair = divmod(i, PAIRS_PER_ROW)
        shown_input = figure.add_subplot(rows, columns, row * columns + 2 * pair + 1)
        shown_input.imshow(as_image(analysis.inputs[i]), cmap="gray", interpolation="nearest")
        shown_input.set_title(f"input {i}", fontsize=7)
        heatmap = as_plane(analysis.heatmaps[i])
        scale = float(np.nanmax(np.abs(heatmap))) if np.isfinite(heatmap).any() else 1.0
        scale = scale if scale > 0 else 1.0
        shown_map = figure.add_subplot(rows, columns, row * columns + 2 * pair + 2)
        # bwr: red positive, blue negative, white zero; symmetric limits keep zero white.
        shown_map.imshow(np.nan_to_num(heatmap), cmap="bwr", vmin=-scale, vmax=scale, interpolation="nearest")
        shown_map.set_title(f"R {analysis.sums[i]:.3g} / t {analysis.targets[i]:.3g}", fontsize=7)
        for axes in (shown_input, shown_map):
            axes.set_xticks([])
            axes.set_yticks([])
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.3)
    path = Path(folder) / image_name(nodeid)
    return write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=DPI))


def as_plane(array: np.ndarray) -> np.ndarray:
    """A 2-D view of one sample: channels summed, vectors as a single row."""
    array = _channels_last(np.asarray(array, dtype=np.float64))
    if array.ndim == 3:
        return array.sum(axis=-1)
    if array.ndim == 2:
        return array
    return array.reshape(1, -1)


def _channels_last(array: np.ndarray) -> np.ndarray:
    """A PyTorch image (channels first: 3 x H x W) as Keras has it (H x W x 3)."""
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        return np.moveaxis(array, 0, -1)
    return array


def as_image(array: np.ndarray) -> np.ndarray:
    array = _channels_last(np.asarray(array, dtype=np.float64))
    if array.ndim == 3 and array.shape[-1] == 3:
        low, high = array.min(), array.max()
        return (array - low) / (high - low) if high > low else np.zeros_like(array)
    return as_plane(array)
