"""Small pictures for the HTML report and pytest-html, as base64 PNG text.

They are drawn where the analysis is (the process, or the pytest-xdist worker, that
ran the test) and travel on the test report as plain text, because the heatmaps
themselves stay on the worker. Thumbnails, not full-size copies: a sample's input
and heatmap are reduced to at most THUMBNAIL_PIXELS on their longer side, so the
page for the default suite stays well under a few MB.

Colours as in heatmap_images.py: inputs grey, heatmaps red positive, blue negative,
white zero, on a scale symmetric around zero for each sample.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import weakref

import pytest

from ..base.lazy import np
from .heatmap_images import as_image, as_plane
from .results import REPORT_ATTRIBUTE, outcome_of
from .summary import LEAKING

THUMBNAIL_PIXELS = 56
SAMPLES_SHOWN = 16
PAIRS_PER_ROW = 4
CHART_DPI = 90

# Report attribute with the pictures of one analysis (beside results.REPORT_ATTRIBUTE):
# {"analysis": key, "samples": [{"sample", "input", "heatmap", "sum", "target"}], "comparison": {...} or None}
IMAGES_ATTRIBUTE = "lrp_images"
COMPARED = {  # a check that compares two heatmap batches -> their names
    "baseline": ("baseline", "current"),
    "batch_invariance": ("in the batch", "alone"),
    "determinism": ("first", "second"),
}
RERUNS = {"batch_invariance": "alone", "determinism": "repeat"}  # checks/reruns.py
_drawn_key = pytest.StashKey[dict]()


def wanted(config, settings) -> bool:
    """Pictures cost time: only for --lrp-html, or pytest-html's --html."""
    return settings.path("lrp_html") is not None or bool(getattr(config.option, "htmlpath", None))


def attach_pictures(item, report, settings, rules_path) -> None:
    """Put the analysis' thumbnails (and, for a failed comparison, its picture) on the report;
    with pytest-html, also its extras. Drawn once per analysis in this process."""
    analysis = item.analysis
    if analysis is None:
        return
    key = analysis_key(item.model_path, item.rule.id)
    drawn = item.config.stash.setdefault(_drawn_key, {})
    # A weak reference: the pictures must not keep an analysis (its heatmaps, its reruns) alive.
    if key not in drawn or drawn[key][0]() is not analysis:
        drawn[key] = (weakref.ref(analysis), sample_pictures(analysis), {})
    _, samples, charts = drawn[key]
    outcome = outcome_of(report)
    comparison = (
        _comparison(item, analysis, settings, rules_path) if outcome == "failed" and item.check in COMPARED else None
    )
    setattr(report, IMAGES_ATTRIBUTE, {"analysis": key, "samples": samples, "comparison": comparison})
    if getattr(item.config.option, "htmlpath", None):
        from pytest_html import extras

        record = getattr(report, REPORT_ATTRIBUTE)
        leak = shown_leak(record)
        text = bool(samples) and "tokens" in samples[0]
        if "mosaic" not in charts:
            charts["mosaic"] = "".join(f"<p>{tokens_html(s)}</p>" for s in samples) if text else mosaic_text(analysis)
        chart_key = ("chart", leak and leak["name"])
        if chart_key not in charts and len(record.get("layers") or []) > 1:
            charts[chart_key] = record_chart(record)
        report.extras = (
            list(getattr(report, "extras", []))
            + [extras.html(charts["mosaic"]) if text else extras.png(charts["mosaic"], "inputs and heatmaps")]
            + ([extras.png(charts[chart_key], "relevance per layer")] if chart_key in charts else [])
        )
        if comparison:
            report.extras.append(extras.png(comparison["png"], " / ".join(comparison["names"] + ["difference"])))


def record_chart(record) -> str:
    """The per-layer chart of a result record's worst sample."""
    return layer_chart(record["layers"], shown_leak(record), float(record["targets"][record.get("worst_sample", 0)]))


def shown_leak(record):
    """The leaking layer where relevance was not conserved (also where the declared `leaks:`
    explain it), as in the terminal summary; elsewhere the largest change is float noise."""
    explained = (record.get("leaks") or {}).get("verdict") == "explained"
    return record.get("leak_layer") if record["outcome"] in LEAKING or explained else None


def _comparison(item, analysis, settings, rules_path):
    names = COMPARED[item.check]
    if item.check == "baseline":
        from ..checks.baseline import Unreadable, baseline_path, read_baseline

        try:
            stored = read_baseline(baseline_path(settings, rules_path, analysis))
        except Unreadable:
            return None
        if stored is None or stored[0].shape != analysis.heatmaps.shape:
            return None
        expected, actual = stored[0], analysis.heatmaps
    else:
        expected, actual = analysis.heatmaps, analysis.reruns[RERUNS[item.check]]
    return comparison_picture(expected, actual, names, f"{item.rule.id} on {item.model_name}")


def analysis_key(model_path, rule_id: str) -> str:
    """The tests of one (model, rule) share one analysis, so they share its pictures."""
    return f"{model_path}::{rule_id}"


def sample_pictures(analysis, limit: int = SAMPLES_SHOWN) -> list:
    """Input and heatmap thumbnails of the first ``limit`` samples, with their sums and targets."""
    if getattr(analysis.model, "kind", None) == "text":
        return [token_relevance(analysis, i) for i in range(min(limit, len(analysis.heatmaps)))]
    pictures = []
    for i in range(min(limit, len(analysis.heatmaps))):
        shown_input, shown_map = _sample_rgba(analysis, i)
        pictures.append(
            {
                "sample": i,
                "input": png_text(shown_input),
                "heatmap": png_text(shown_map),
                "sum": float(analysis.sums[i]),
                "target": float(analysis.targets[i]),
            }
        )
    return pictures


def token_relevance(analysis, i: int) -> dict:
    """A text sample as its tokens (strings from the inputs file, else ids) with their relevance, padding left out."""
    ids, mask = analysis.inputs[i, 0], analysis.inputs[i, 1]
    strings = getattr(analysis.model, "tokens", None)
    kept = np.flatnonzero(mask)
    tokens = [
        [str(strings[i][j]) if strings is not None else f"#{int(ids[j])}", float(analysis.heatmaps[i][j])] for j in kept
    ]
    return {"sample": i, "tokens": tokens, "sum": float(analysis.sums[i]), "target": float(analysis.targets[i])}


def tokens_html(picture: dict) -> str:
    """Coloured text: red positive, blue negative, white zero, on the sample's symmetric scale."""
    from html import escape

    scale = max((abs(value) for _, value in picture["tokens"] if math.isfinite(value)), default=0.0) or 1.0
    spans = []
    for token, value in picture["tokens"]:
        share = max(-1.0, min(1.0, value / scale)) if math.isfinite(value) else 0.0
        fade = int(255 * (1 - abs(share)))
        colour = f"rgb(255,{fade},{fade})" if share >= 0 else f"rgb({fade},{fade},255)"
        spans.append(f'<span style="background:{colour}" title="{value:.4g}">{escape(token)}</span>')
    return '<span class="tokens">' + " ".join(spans) + "</span>"


def mosaic_text(analysis, limit: int = SAMPLES_SHOWN) -> str:
    """One PNG of input/heatmap pairs, four pairs a row: pytest-html shows one image per extra."""
    pairs = [_sample_rgba(analysis, i) for i in range(min(limit, len(analysis.heatmaps)))]
    # Small maps (a 28 x 28 digit, a vector of 5) would be specks: repeat their pixels.
    factor = min(8, max(1, THUMBNAIL_PIXELS // max(pairs[0][1].shape[:2])))
    pairs = [(_enlarge(a, factor), _enlarge(h, factor)) for a, h in pairs]
    tiles = [np.concatenate([a, _gap(a, 2), h], axis=1) for a, h in pairs]
    height, width = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    tiles = [_pad(t, height, width) for t in tiles]
    tiles += [np.ones_like(tiles[0])] * (-len(tiles) % PAIRS_PER_ROW if len(tiles) > PAIRS_PER_ROW else 0)
    rows = [_joined(tiles[start : start + PAIRS_PER_ROW], axis=1) for start in range(0, len(tiles), PAIRS_PER_ROW)]
    return png_text(_joined(rows, axis=0))


def layer_chart(layers: list, leak, target: float) -> str:
    """Relevance total at every layer's output, output (left) to input (right), for one sample.

    ``layers`` and ``leak`` as in the result records (results.py). A leak shows as a step;
    the leaking layer's step is drawn red. Title, legend and numbers are the page's text,
    not the picture's: matplotlib's text rendering was most of a chart's cost.
    """
    figure = _figure((5.0, 2.1))
    axes = figure.add_subplot()
    names = [layer["name"] for layer in layers]
    values = [float(layer["relevance"]) for layer in layers]  # float() also reads the records' "nan"/"inf"
    positions = list(range(len(values)))
    axes.axhline(target, color="0.55", linestyle="--", linewidth=0.8)
    axes.plot(positions, values, drawstyle="steps-mid", marker="o", markersize=3, color="#333333", linewidth=1.2)
    if leak is not None and leak["name"] in names:
        # The step from the leaking layer's output to what it hands its input below.
        index = names.index(leak["name"])
        below = min(index + 1, len(values) - 1)
        axes.plot(
            [index, below],
            [values[index], values[below]],
            color="#d62728",
            linewidth=2.2,
            drawstyle="steps-mid",
            marker="o",
            markersize=4,
        )
    axes.set_xticks(positions)
    axes.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    for label in axes.get_xticklabels():
        if leak is not None and label.get_text() == leak["name"]:
            label.set_color("#d62728")
    axes.tick_params(axis="y", labelsize=7)
    # Relevance that is conserved varies in its 6th digit: matplotlib would write the axis as an
    # offset ("1e-5+9.0715") above the axes, outside the figure. Plain numbers, and a layout
    # that makes room for however wide they are.
    axes.ticklabel_format(axis="y", useOffset=False, style="plain")
    figure.set_layout_engine("tight", pad=0.3)
    return figure_text(figure)


def comparison_picture(expected, actual, names: tuple, title: str) -> dict:
    """Expected / actual / difference of the worst sample (as the baseline image of --lrp-heatmaps)."""
    from ..checks.baseline_images import comparison_figure
    from ..checks.properties import HeatmapDifference
    from ..config.rulefile import Tolerance

    difference = HeatmapDifference(expected, actual, Tolerance(rtol=0.0, atol=0.0))
    figure = comparison_figure(difference, title, names=names, dpi=CHART_DPI)
    return {"title": title, "names": list(names), "sample": difference.worst, "png": figure_text(figure)}


def png_text(rgba) -> str:
    from matplotlib.image import imsave

    buffer = io.BytesIO()
    imsave(buffer, rgba, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_text(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=CHART_DPI)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(size):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state shared with the user's tests

    return Figure(figsize=size, dpi=CHART_DPI)


def _sample_rgba(analysis, i: int):
    picture = _shrink(as_image(analysis.inputs[i]), mean=True)
    if picture.ndim == 2:
        low, high = np.nanmin(picture), np.nanmax(picture)
        picture = _colormap("gray")((picture - low) / (high - low) if high > low else np.zeros_like(picture))
    else:
        picture = np.concatenate([picture, np.ones((*picture.shape[:2], 1))], axis=-1)
    # Relevance adds up: a thumbnail pixel holds the sum of the pixels it covers.
    heatmap = _shrink(as_plane(analysis.heatmaps[i]), mean=False)
    finite = np.abs(heatmap[np.isfinite(heatmap)])
    scale = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    shown_map = _colormap("bwr")(
        (np.clip(np.nan_to_num(heatmap, posinf=scale, neginf=-scale), -scale, scale) / scale + 1) / 2
    )
    return picture, shown_map


@functools.cache
def _colormap(name: str):
    """matplotlib hands out a copy of a colormap on each lookup, which builds its table again:
    a third of the thumbnails' time before this cache."""
    from matplotlib import colormaps

    return colormaps[name]


def _shrink(plane, mean: bool):
    """Reduce by whole blocks so that the longer side is at most THUMBNAIL_PIXELS."""
    plane = np.asarray(plane, dtype=np.float64)
    factor = math.ceil(max(plane.shape[:2]) / THUMBNAIL_PIXELS)
    if factor <= 1:
        return plane
    height, width = (-(-n // factor) * factor for n in plane.shape[:2])
    padding = [(0, height - plane.shape[0]), (0, width - plane.shape[1])] + [(0, 0)] * (plane.ndim - 2)
    blocks = np.pad(plane, padding).reshape(height // factor, factor, width // factor, factor, *plane.shape[2:])
    return blocks.mean(axis=(1, 3)) if mean else blocks.sum(axis=(1, 3))


def _enlarge(rgba, factor: int):
    return rgba.repeat(factor, axis=0).repeat(factor, axis=1)


def _joined(pictures: list, axis: int):
    """Side by side (axis 1) or one above the other (axis 0), 6 white pixels apart."""
    parts = [part for picture in pictures for part in (picture, _gap(picture, 6, axis))]
    return np.concatenate(parts[:-1], axis=axis)


def _gap(like, size: int, axis: int = 1):
    shape = list(like.shape)
    shape[axis] = size
    return np.ones(shape)


def _pad(tile, height: int, width: int):
    return np.pad(tile, [(0, height - tile.shape[0]), (0, width - tile.shape[1]), (0, 0)], constant_values=1.0)
