"""A PNG of a failed baseline comparison: baseline, current and difference of the worst sample."""

from __future__ import annotations

from pathlib import Path

from ..base.atomic import write_atomically
from ..base.lazy import np

DPI = 100


def write_comparison_image(path: Path, difference, title: str) -> Path:
    figure = comparison_figure(difference, title)
    return write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=DPI))


def comparison_figure(difference, title: str, names=("baseline", "current"), dpi: int = DPI):
    """Expected, actual and their difference for the worst sample (also drawn into the HTML report)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state shared with the user's tests

    sample = difference.worst
    baseline = _plane(difference.expected[sample])
    current = _plane(difference.actual[sample])
    change = current - baseline
    figure = Figure(figsize=(7.5, 2.9), dpi=dpi)
    figure.suptitle(f"{title}, sample {sample}", fontsize=9)
    # Baseline and current share one symmetric scale so that equal colours mean equal
    # relevance; the difference gets its own, or small changes would be invisible.
    scale = _scale(baseline, current)
    expected_name, actual_name = names
    panels = (
        (expected_name, baseline, scale),
        (actual_name, current, scale),
        (f"{actual_name} - {expected_name}", change, _scale(change)),
    )
    for column, (name, plane, limit) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, 3, column)
        shown = axes.imshow(np.nan_to_num(plane), cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest")
        axes.set_title(name, fontsize=8)
        axes.set_xticks([])
        axes.set_yticks([])
        figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    return figure


def _plane(heatmap: np.ndarray) -> np.ndarray:
    """One sample as a 2-D picture: channels summed, a vector as a single row."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim == 3:
        return heatmap.sum(axis=-1)
    return heatmap if heatmap.ndim == 2 else heatmap.reshape(1, -1)


def _scale(*planes) -> float:
    finite = [np.abs(p[np.isfinite(p)]) for p in planes]
    largest = max((float(f.max()) for f in finite if f.size), default=0.0)
    return largest if largest > 0 else 1.0
