"""The HTML report (--lrp-html): its content against numpy, xdist, pytest-html, and a real browser."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from helpers.browser import Chromium

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RULES = (
    "rules:\n"
    "  - {id: z, analyzer: lrp.z, xfail: the bias absorbs relevance}\n"
    "  - {id: z-strict, analyzer: lrp.z, tolerance: {rtol: 1.0e-9, atol: 0}}\n"
    "  - {id: flat, analyzer: lrp.flat, checks: [conservation, finite, determinism]}\n"
)


class Page(HTMLParser):
    """The parts of the report a test reads: table rows, images, sections, captions."""

    def __init__(self, text: str):
        super().__init__()
        self.rows, self.images, self.sections, self.captions = [], [], [], []
        self._row = self._cell = self._caption = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-outcome" in attrs:
            self._row = {
                "id": attrs["id"],
                "outcome": attrs["data-outcome"],
                "nodeid": attrs["title"],
                "cells": [],
                "links": [],
            }
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "a" and self._row is not None:
            self._row["links"].append(attrs["href"])
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "figcaption":
            self._caption = []

    def handle_data(self, data):
        for part in (self._cell, self._caption):
            if part is not None:
                part.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row["cells"].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "figcaption":
            self.captions.append("".join(self._caption))
            self._caption = None


def _decode(src: str) -> np.ndarray:
    import matplotlib.image

    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    return matplotlib.image.imread(io.BytesIO(base64.b64decode(src[len(prefix) :])), format="png")


def _run(pytester, *args):
    result = pytester.runpytest(*args, "--lrp-html=report.html", "--lrp-report=report.json")
    page = Page((pytester.path / "report.html").read_text())
    records = json.loads((pytester.path / "report.json").read_text())["results"]
    return result, page, records


def test_the_page_lists_every_test_failures_first_with_the_numbers_numpy_computes(lrp_project, pytester):
    lrp_project.rules(f"defaults:\n  inputs: {lrp_project.inputs}\n" + RULES)
    result, page, records = _run(pytester, f"--lrp-model={lrp_project.biased.path}", "rules.yaml")
    result.assert_outcomes(failed=1, xfailed=1, passed=5)
    result.stdout.fnmatch_lines(["lrp: HTML report */report.html"])

    assert sorted(row["nodeid"] for row in page.rows) == sorted(r["nodeid"] for r in records)
    outcomes = [row["outcome"] for row in page.rows]
    assert outcomes == ["failed", "xfailed"] + ["passed"] * 5
    assert [row["cells"][:3] for row in page.rows[:2]] == [
        ["biased", "z-strict", "conservation"],
        ["biased", "z", "conservation"],
    ]
    # Then by model, rule and check in the documented order.
    assert [row["cells"][1:3] for row in page.rows[2:]] == [
        ["flat", "conservation"],
        ["flat", "finite"],
        ["flat", "determinism"],
        ["z", "finite"],
        ["z-strict", "finite"],
    ]

    net = lrp_project.biased
    x = np.load(lrp_project.inputs)["x"]
    outputs = net.outputs(x)
    sums = net.lrp_z(x).sum(axis=1)
    errors = np.abs(sums - outputs.max(axis=1))
    z = next(row for row in page.rows if row["cells"][1] == "z" and row["cells"][2] == "conservation")
    _model, _rule, _check, outcome, max_error, relative, tolerance, leak, split = z["cells"]
    assert (outcome, tolerance) == ("xfailed", "rtol 1e-05, atol 1e-06")
    assert float(max_error) == pytest.approx(errors.max(), rel=1e-3)  # printed to 4 digits
    assert float(relative.rstrip("%")) / 100 == pytest.approx((errors / np.abs(outputs.max(axis=1))).max(), abs=1e-4)
    z_record = next(r for r in records if r["nodeid"] == z["nodeid"])
    assert leak == f"{z_record['leak_layer']['name']} (Dense)"
    # The numpy reference's split and the xfail's reason, as in the terminal's table (-v).
    assert split == z_record["leak_split"] + "; the bias absorbs relevance" and "bias" in z_record["leak_split"]
    # Every table row links to its rule's section, and every section exists.
    assert {row["links"][0] for row in page.rows} == {f"#{s}" for s in page.sections}
    assert len(page.sections) == 3

    # Each sample's caption: the heatmap's sum and the target numpy computes.
    captions = [c for c in page.captions if c.startswith(tuple(f"{i}: R" for i in range(len(x))))]
    assert len(captions) == 3 * len(x)
    z_captions = captions[len(x) : 2 * len(x)]  # sections in order: flat, z, z-strict
    for i, caption in enumerate(z_captions):
        r, t = caption.split(": R ")[1].split(" / t ")
        assert float(r) == pytest.approx(sums[i], rel=1e-3) and float(t) == pytest.approx(outputs[i].max(), rel=1e-3)


def test_heatmap_thumbnails_red_positive_blue_negative(lrp_project, pytester):
    lrp_project.rules(
        f"defaults:\n  inputs: {lrp_project.inputs}\nrules:\n  - {{id: z, analyzer: lrp.z, xfail: bias}}\n"
    )
    _, page, _ = _run(pytester, f"--lrp-model={lrp_project.biased.path}", "rules.yaml")
    x = np.load(lrp_project.inputs)["x"]
    relevance = lrp_project.biased.lrp_z(x)
    heatmaps = [img for img in page.images if img.get("alt", "").startswith("heatmap ")]
    assert len(heatmaps) == len(x)
    for i, img in enumerate(heatmaps):
        pixels = _decode(img["src"])
        assert pixels.shape[:2] == (1, x.shape[1])  # a vector of 5 is one row of 5 pixels
        red, blue = pixels[0, :, 0], pixels[0, :, 2]
        scale = np.abs(relevance[i]).max()
        for value, r, b in zip(relevance[i], red, blue):
            if value > 0.05 * scale:
                assert r > b
            elif value < -0.05 * scale:
                assert b > r
        # Symmetric scale: the largest |value| is fully saturated.
        strongest = int(np.abs(relevance[i]).argmax())
        assert min(red[strongest], blue[strongest]) < 0.05


def test_the_chart_marks_the_leaking_layer(pytester, tensorflow_imported_once):
    # A bias only in layer 'd2': the z rule conserves everywhere else, so that is the leak.
    tf = tensorflow_imported_once
    rng = np.random.default_rng(5)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((4,)),
            tf.keras.layers.Dense(6, activation="relu", use_bias=False, name="d1"),
            tf.keras.layers.Dense(5, activation="relu", name="d2"),
            tf.keras.layers.Dense(3, use_bias=False, name="out"),
        ]
    )
    model.set_weights([np.abs(rng.normal(0.5, 0.3, w.shape)).astype(np.float32) for w in model.get_weights()])
    model.save(pytester.path / "chain.h5")
    (pytester.path / "rules.yaml").write_text(
        "rules:\n  - {id: z, analyzer: lrp.z, xfail: bias in d2}\n  - {id: w, analyzer: lrp.w_square}\n"
        "  - {id: z-declared, analyzer: lrp.z, leaks: [bias]}\n"
    )
    result, page, records = _run(pytester, "--lrp-model=chain.h5", "rules.yaml", "-k", "conservation")
    result.assert_outcomes(xfailed=2, passed=1)
    w_chart, z_chart, declared_chart = [img for img in page.images if img["alt"].startswith("relevance per layer")]
    z = next(r for r in records if r["rule"] == "z")
    for layer in z["layers"]:
        assert f"{layer['name']} {layer['relevance']:.4g}" in z_chart["alt"]
    assert any(
        f"red: the leaking layer d2 (Dense), change {z['leak_layer']['change']:+.4g}" in c for c in page.captions
    )
    assert any(c.endswith("no leaking layer") for c in page.captions)  # w-square conserves
    assert page.rows[0]["cells"][7:] == ["d2 (Dense)", z["leak_split"] + "; bias in d2"]
    # The leaking step is drawn red, also where the declared leaks explain it (an expected failure);
    # a conserving rule's chart has no red at all.
    charts = (w_chart["src"], z_chart["src"], declared_chart["src"])
    red = [int(np.sum((p[..., 0] > 0.75) & (p[..., 1] < 0.3) & (p[..., 2] < 0.3))) for p in map(_decode, charts)]
    assert red[0] == 0 and red[1] > 50 and red[2] > 50
    declared = next(row for row in page.rows if row["cells"][1] == "z-declared")
    assert declared["outcome"] == "xfailed" and declared["cells"][7] == "d2 (Dense)"
    # Expected by the declared leak: the cell says it is declared and explained, as the terminal does.
    declared_split = next(r["leak_split"] for r in records if r["rule"] == "z-declared")
    assert declared["cells"][8].startswith(declared_split + " (declared: bias; explained)")
    # The reference's split of the leak by mechanism: the bias of d2, as in the JSON report.
    table, declared_table = re.findall(
        r'<table class="mechanisms">.*?</table>', (pytester.path / "report.html").read_text()
    )
    bias = next(entry["bias"] for entry in z["leaks"]["layers"] if entry["name"] == "d2")
    assert bias != 0 and f"<tr><td>d2</td><td>{bias:+.4g}</td>" in table
    assert "declared: none; verdict: not conserved" in table and "declared: bias; verdict: explained" in declared_table


@pytest.mark.parametrize(
    "values",
    [
        [14.766263, 14.766267, 14.766267, 14.766268, 14.766268],  # conserved: the numbers differ in their 7th digit
        [9.8, 9.81, 9.8, 9.8, 362.5],  # a leak
    ],
)
def test_the_chart_keeps_its_numbers_inside_the_picture(values):
    from pytest_lrp.reports.html_images import layer_chart

    layers = [{"name": f"layer_{i}", "relevance": v} for i, v in enumerate(values)]
    picture = _decode("data:image/png;base64," + layer_chart(layers, None, values[0]))
    ink = picture[..., :3].mean(axis=-1) < 0.5
    # matplotlib wrote the first as an offset ("1e-6+1.476626e1") above the axes, cut off by the picture's edge.
    edges = np.concatenate([ink[:2].ravel(), ink[-2:].ravel(), ink[:, :2].ravel(), ink[:, -2:].ravel()])
    assert not edges.any() and ink.sum() > 500


def test_ini_key_and_the_page_replaced_whole(lrp_project, pytester):
    lrp_project.rules(f"defaults:\n  inputs: {lrp_project.inputs}\nrules:\n  - {{id: flat, analyzer: lrp.flat}}\n")
    pytester.makeini("[pytest]\nlrp_html = out/lrp.html\n")
    (pytester.path / "out").mkdir()
    (pytester.path / "out" / "lrp.html").write_text("old page")
    result = pytester.runpytest(f"--lrp-model={lrp_project.nobias.path}", "rules.yaml")
    result.assert_outcomes(passed=2)
    text = (pytester.path / "out" / "lrp.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert len(Page(text).rows) == 2
    assert [p.name for p in (pytester.path / "out").iterdir()] == ["lrp.html"]  # no temporary file left


def test_an_error_is_listed_with_its_message(lrp_project, pytester):
    # An analyzer that crashes (bounds missing): its tests error. (Inputs that do not fit stop the run instead.)
    lrp_project.rules(
        f"defaults:\n  inputs: {lrp_project.inputs}\nrules:\n  - {{id: bounded, analyzer: deep_taylor.bounded}}\n"
    )
    result, page, _records = _run(pytester, f"--lrp-model={lrp_project.nobias.path}", "rules.yaml")
    result.assert_outcomes(errors=2)
    assert [row["outcome"] for row in page.rows] == ["error", "error"]
    text = (pytester.path / "report.html").read_text()
    assert html.escape("deep_taylor.bounded crashed (rule 'bounded' on ") in text
    assert page.images == []  # nothing was analyzed, so nothing to draw


def test_a_killed_run_leaves_the_old_page(lrp_project, pytester):
    lrp_project.rules(f"defaults:\n  inputs: {lrp_project.inputs}\nrules:\n  - {{id: flat, analyzer: lrp.flat}}\n")
    pytester.makepyfile(
        test_zz_killed="import os, signal\n\ndef test_kill():\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    (pytester.path / "report.html").write_text("old page")
    pytester.runpytest_subprocess(
        f"--lrp-model={lrp_project.nobias.path}",
        "rules.yaml",
        "test_zz_killed.py",
        "--lrp-html=report.html",
        "-p",
        "no:cacheprovider",
    )
    assert (pytester.path / "report.html").read_text() == "old page"
    assert not [p for p in pytester.path.iterdir() if p.name.endswith(".tmp")]


def test_comparison_failures_show_expected_current_and_difference(lrp_project, pytester):
    lrp_project.rules(
        f"defaults:\n  inputs: {lrp_project.inputs}\n  baseline: true\n"
        "rules:\n  - {id: flat, analyzer: lrp.flat, checks: [baseline]}\n"
        "  - {id: noise, analyzer: random, target: output, checks: [determinism], xfail: no}\n"
    )
    model = f"--lrp-model={lrp_project.biased.path}"
    pytester.runpytest(model, "rules.yaml", "--lrp-update-baselines").assert_outcomes(passed=1, failed=1)
    stored = pytester.path / "lrp_baselines" / "biased" / "flat.npz"
    with np.load(stored) as baseline:
        heatmaps, metadata = baseline["heatmaps"].copy(), baseline["metadata"]
    heatmaps[2, 1] += 0.5
    np.savez(stored, heatmaps=heatmaps, metadata=metadata)
    result, page, _ = _run(pytester, model, "rules.yaml")
    result.assert_outcomes(failed=2)
    figures = {c.split(":")[0]: c for c in page.captions if " / difference" in c}
    assert figures["baseline"] == "baseline: baseline / current / difference, worst sample 2"
    assert figures["determinism"].startswith("determinism: first / second / difference, worst sample ")
    comparison = [img for img in page.images if img["alt"] == "baseline / current / difference"]
    assert len(comparison) == 1 and _decode(comparison[0]["src"]).shape[1] > 300


@pytest.mark.xdist
def test_one_page_from_xdist_workers(lrp_project, pytester):
    pytest.importorskip("xdist")
    lrp_project.rules(f"defaults:\n  inputs: {lrp_project.inputs}\n" + RULES)
    model = f"--lrp-model={lrp_project.biased.path}"
    _, alone, _ = _run(pytester, model, "rules.yaml", "-p", "no:randomly")
    (pytester.path / "report.html").unlink()
    result = pytester.runpytest_subprocess(model, "rules.yaml", "-n", "2", "--lrp-html=report.html")
    result.assert_outcomes(failed=1, xfailed=1, passed=5)
    spread = Page((pytester.path / "report.html").read_text())
    assert [(r["nodeid"], r["outcome"], r["cells"]) for r in spread.rows] == [
        (r["nodeid"], r["outcome"], r["cells"]) for r in alone.rows
    ]
    # The pictures came from the workers: all samples of all three sections, the same pixels.
    assert [i["alt"] for i in spread.images] == [i["alt"] for i in alone.images]
    for a, b in zip(spread.images, alone.images):
        np.testing.assert_array_equal(_decode(a["src"]), _decode(b["src"]))


def test_pytest_html_rows_carry_heatmaps_and_chart(lrp_project, pytester):
    pytest.importorskip("pytest_html")
    lrp_project.rules(
        f"defaults:\n  inputs: {lrp_project.inputs}\nrules:\n  - {{id: z, analyzer: lrp.z, xfail: bias}}\n"
    )
    result = pytester.runpytest(
        f"--lrp-model={lrp_project.biased.path}", "rules.yaml", "--html=ph.html", "--self-contained-html"
    )
    result.assert_outcomes(xfailed=1, passed=1)
    text = (pytester.path / "ph.html").read_text()
    blob = json.loads(html.unescape(re.search(r'data-jsonblob="([^"]*)"', text).group(1)))
    for test in blob["tests"].values():
        (report,) = [r for r in test if r["extras"]]
        names = [extra["name"] for extra in report["extras"]]
        assert names == ["inputs and heatmaps", "relevance per layer"]
        mosaic, chart = (_decode(extra["content"]) for extra in report["extras"])  # self-contained: data URIs
        # 6 samples of 5 inputs, four input/heatmap pairs a row, each value an 8 x 8 block, 6 pixels apart
        assert mosaic.shape[:2] == (8 + 6 + 8, 4 * (5 * 8 + 2 + 5 * 8) + 3 * 6)
        assert chart.shape[1] > 300


# ---- in a real browser (helpers/browser.py) ------------------------------------------------------


@pytest.fixture
def chromium():
    executable = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium not found on PATH: .ci/run installs it, so the browser tests must run in CI")
        pytest.skip("chromium not found on PATH (apt-get install chromium); CI installs it")
    browser = Chromium(executable)
    yield browser
    browser.close()


@pytest.mark.browser
def test_the_page_in_a_browser(lrp_project, pytester, chromium):
    lrp_project.rules(f"defaults:\n  inputs: {lrp_project.inputs}\n" + RULES)
    _, page, records = _run(pytester, f"--lrp-model={lrp_project.biased.path}", "rules.yaml")
    chromium.open(pytester.path / "report.html")
    assert chromium.problems() == []
    # Nothing fetched but the page itself and its data URIs.
    assert [url for url in chromium.requests() if not url.startswith("data:")] == [
        (pytester.path / "report.html").as_uri()
    ]
    rows = chromium.evaluate("Array.from(document.querySelectorAll('#results tbody tr')).map(r => r.dataset.outcome)")
    assert rows == [row["outcome"] for row in page.rows] and len(rows) == len(records)
    images = chromium.evaluate(
        "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert len(images) == len(page.images) > 10
    assert all(complete and width > 0 and height > 0 for _, complete, width, height in images), images
    # The outcome filter: untick "passed", and only the other rows stay visible.
    shown = chromium.evaluate(
        "document.querySelector('#filter input[data-outcome=passed]').click();"
        "Array.from(document.querySelectorAll('#results tbody tr')).filter(r => r.offsetParent !== null).map(r => r.dataset.outcome)"
    )
    assert shown == [o for o in rows if o != "passed"] and shown
    # A rule's link leads to its section.
    target = chromium.evaluate(
        "const a = document.querySelector('#results tbody tr a'); a.click();"
        "[location.hash, document.querySelector(location.hash).tagName, document.querySelector(location.hash).getBoundingClientRect().top]"
    )
    assert target[0] == page.rows[0]["links"][0] and target[1] == "SECTION" and abs(target[2]) < 5
    assert chromium.problems() == []


@pytest.mark.browser
def test_pytest_html_page_with_the_extras_in_a_browser(lrp_project, pytester, chromium):
    pytest.importorskip("pytest_html")
    lrp_project.rules(
        f"defaults:\n  inputs: {lrp_project.inputs}\nrules:\n  - {{id: z, analyzer: lrp.z, xfail: bias}}\n"
    )
    # Rows render their extras only when expanded: expand every row.
    pytester.runpytest(
        f"--lrp-model={lrp_project.biased.path}",
        "rules.yaml",
        "--html=ph.html",
        "--self-contained-html",
        "-o",
        "render_collapsed=none",
    )
    chromium.open(pytester.path / "ph.html")
    # pytest-html shows a row's pictures one at a time: read the first, step to the next, read it.
    shown = chromium.evaluate("""(async () => {
        const seen = [];
        const look = m => { const img = m.querySelector('img');
            return [m.querySelector('.media__name').innerText, img.complete && img.naturalWidth > 0 && img.naturalHeight > 0]; };
        for (const m of document.querySelectorAll('#results-table .media')) {
            seen.push(look(m));
            m.querySelector('.media-container__nav--right').click();
            await new Promise(done => setTimeout(done, 100));
            seen.push(look(m));
        }
        return seen;
    })()""")
    pictures = [["inputs and heatmaps", True], ["relevance per layer", True]]
    assert shown == pictures * 2  # both tests of the rule
    assert [p for p in chromium.problems() if "favicon" not in json.dumps(p)] == []
