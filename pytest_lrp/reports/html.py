"""The self-contained HTML report written with --lrp-html=PATH.

One page, nothing fetched when it is opened: CSS and the outcome filter's few lines
of script are inline, every picture is a data URI. The controller (or the only
process) builds it at the end of the run from the result records and the pictures
that arrived on the test reports (html_images.py), and writes it atomically.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from ..base.atomic import write_atomically
from ..checks.leaks import MECHANISMS, UNEXPLAINED
from ..config.rulefile import CHECK_NAMES
from .html_images import IMAGES_ATTRIBUTE, analysis_key, record_chart, shown_leak, tokens_html
from .json_report import versions
from .reporting import records_key
from .summary import notes_text

# Failures first: what needs a look comes first in the table.
OUTCOME_ORDER = ("failed", "error", "xpassed-strict", "xpassed", "xfailed", "passed")


class HtmlReport:
    """Keeps the pictures that arrive on LRP test reports (on the xdist controller: from
    every worker) and writes the page at the end, with the records reporting.py keeps."""

    def __init__(self, config, path: Path, workbench):
        self.config = config
        self.path = path
        self.workbench = workbench  # its rules_path is final only after configuration
        self.pictures = {}  # analysis key -> sample pictures (the same on every report of that analysis)
        self.comparisons = {}  # nodeid -> picture of a failed comparison check

    def pytest_runtest_logreport(self, report) -> None:
        images = getattr(report, IMAGES_ATTRIBUTE, None)
        if not images:
            return
        if images["samples"]:
            self.pictures.setdefault(images["analysis"], images["samples"])
        if images["comparison"]:
            self.comparisons[report.nodeid] = images["comparison"]

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        records = self.config.stash.get(records_key, [])
        if hasattr(self.config, "workerinput") or not records:
            return
        page = render_page(records, self.pictures, self.comparisons, self.workbench.rules_path, int(exitstatus))
        write_atomically(self.path, lambda f: f.write(page.encode("utf-8")))

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.config.stash.get(records_key, []) and self.path.exists():
            terminalreporter.write_line(f"lrp: HTML report {self.path}")


def render_page(
    records: list, pictures: dict, comparisons: dict, rules_path: Path, exitstatus: int = 0, now=None
) -> str:
    records = sorted(records, key=_table_order)
    groups = {}
    for record in sorted(records, key=_section_order):
        groups.setdefault(analysis_key(record.get("model_path"), record["rule"]), []).append(record)
    counts = Counter(r["outcome"] for r in records)
    body = [
        _header(records, counts, rules_path, exitstatus, now or datetime.now(timezone.utc)),
        _table(records, counts),
        "<h2>Rules</h2>",
        *(_section(key, group, pictures.get(key), comparisons) for key, group in groups.items()),
    ]
    return PAGE.format(
        style=STYLE, script=SCRIPT, title=escape(f"pytest-lrp report: {rules_path.name}"), body="\n".join(body)
    )


def section_id(model, rule: str) -> str:
    return "s-" + _slug(f"{model or 'no-model'}-{rule}")


def row_id(nodeid: str) -> str:
    return "t-" + _slug(nodeid)


def _header(records, counts, rules_path, exitstatus, now) -> str:
    found = versions()
    models = sorted({(r.get("model") or "-", r.get("model_path") or "-") for r in records})
    count_items = "".join(
        f'<li class="o-{escape(o)}">{escape(o)} <b>{counts[o]}</b></li>' for o in OUTCOME_ORDER if counts.get(o)
    )
    interrupted = (
        '<p class="warn">The run was interrupted: the page shows the tests that finished.</p>'
        if exitstatus == 2
        else ""
    )
    return (
        f"<header><h1>pytest-lrp report</h1>{interrupted}<dl>"
        f"<dt>when</dt><dd>{escape(now.strftime('%Y-%m-%d %H:%M:%S %Z'))}</dd>"
        f"<dt>rule file</dt><dd><code>{escape(str(rules_path))}</code></dd>"
        f"<dt>models</dt><dd>{'<br>'.join(f'{escape(n)} <code>{escape(p)}</code>' for n, p in models)}</dd>"
        f"<dt>versions</dt><dd>{escape(', '.join(f'{k} {v}' for k, v in found.items() if v))}</dd>"
        f'</dl><ul class="counts">{count_items}<li>total <b>{len(records)}</b></li></ul></header>'
    )


def _table(records, counts) -> str:
    buttons = "".join(
        f'<label><input type="checkbox" data-outcome="{escape(o)}" checked> {escape(o)} ({counts[o]})</label>'
        for o in OUTCOME_ORDER
        if counts.get(o)
    )
    rows = []
    for r in records:
        conservation = r.get("check") == "conservation"
        leak = shown_leak(r)
        tol = r["tolerance"]
        cells = (
            escape(r.get("model") or "-"),
            f'<a href="#{section_id(r.get("model"), r["rule"])}">{escape(r["rule"])}</a>',
            escape(r.get("check", "")),
            f'<span class="badge o-{escape(r["outcome"])}">{escape(r["outcome"])}</span>',
            _number(r.get("max_error")) if conservation else "",
            _percent(r.get("max_relative_error")) if conservation else "",
            escape(f"rtol {tol['rtol']:g}, atol {tol['atol']:g}") if conservation else "",
            escape(f"{leak['name']} ({leak['class']})") if leak else "",
            escape(notes_text(r)),  # as the terminal's -v table: the verdict on the declared leaks, an xfail's reason
        )
        rows.append(
            f'<tr id="{row_id(r["nodeid"])}" data-outcome="{escape(r["outcome"])}" title="{escape(r["nodeid"])}">'
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    return (
        '<h2>Tests</h2><form class="filter" id="filter">show: ' + buttons + "</form>"
        '<table id="results"><thead><tr><th>model</th><th>rule</th><th>check</th><th>outcome</th>'
        "<th>max |error|</th><th>max rel. error</th><th>tolerance</th><th>leaking layer</th>"
        "<th>leak by mechanism, reason</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _section(key, group, samples, comparisons) -> str:
    first = group[0]
    conservation = next((r for r in group if r.get("check") == "conservation"), None)
    parts = [
        f'<section id="{section_id(first.get("model"), first["rule"])}">'
        f"<h3>{escape(first['rule'])} on {escape(first.get('model') or '-')} <small>{escape(first['analyzer'])}"
        f"{escape(_params(first.get('params')))}, target {escape(first.get('target', 'output'))}</small></h3>",
        '<ul class="tests">'
        + "".join(
            f'<li><a href="#{row_id(r["nodeid"])}" class="badge o-{escape(r["outcome"])}">{escape(r["check"])}: {escape(r["outcome"])}</a></li>'
            for r in group
        )
        + "</ul>",
    ]
    for r in group:
        if r.get("message"):
            parts.append(
                f"<details open><summary>{escape(r['check'])}: {escape(r['outcome'])}</summary><pre>{escape(r['message'])}</pre></details>"
            )
    parts.append('<div class="pictures">')
    if samples:
        total = first.get("samples") or len(samples)
        more = f" (the first {len(samples)} of {total})" if total > len(samples) else ""
        parts.append(
            f'<figure class="samples"><figcaption>inputs and heatmaps{more}: red positive, blue negative, '
            'white zero, symmetric scale per sample; R = sum of the heatmap, t = target</figcaption><div class="grid">'
            + "".join(_sample(s) for s in samples)
            + "</div></figure>"
        )
    chart = _chart(conservation or first)
    if chart:
        parts.append(chart)
    parts.append("</div>")
    for r in group:
        picture = comparisons.get(r["nodeid"])
        if picture:
            names = " / ".join(picture["names"] + ["difference"])
            parts.append(
                f'<figure class="comparison"><figcaption>{escape(r["check"])}: {escape(names)}, worst sample {picture["sample"]}</figcaption>'
                f'<img alt="{escape(names)}" src="data:image/png;base64,{picture["png"]}"></figure>'
            )
    parts.append('<p class="top"><a href="#results">back to the table</a></p></section>')
    return "\n".join(parts)


def _sample(s) -> str:
    caption = f"{s['sample']}: R {s['sum']:.4g} / t {s['target']:.4g}"
    if "tokens" in s:  # a text model's sample: its tokens coloured by relevance
        return f'<figure class="pair">{tokens_html(s)}<figcaption>{escape(caption)}</figcaption></figure>'
    return (
        f'<figure class="pair"><img alt="input {s["sample"]}" src="data:image/png;base64,{s["input"]}">'
        f'<img alt="heatmap {s["sample"]}" src="data:image/png;base64,{s["heatmap"]}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _chart(record) -> str:
    layers = record.get("layers") or []
    if len(layers) < 2:
        return ""
    sample = record.get("worst_sample", 0)
    leak = shown_leak(record)
    png = record_chart(record)
    alt = "relevance per layer: " + ", ".join(f"{layer['name']} {float(layer['relevance']):.4g}" for layer in layers)
    caption = (
        f"relevance total at each layer's output, sample {sample}, output (left) to input (right); "
        f"dashed: the target {float(record['targets'][sample]):.4g}; "
    )
    caption += (
        f"red: the leaking layer {leak['name']} ({leak['class']}), change {float(leak['change']):+.4g}"
        if leak
        else "no leaking layer"
    )
    return (
        f'<figure class="chart"><img alt="{escape(alt)}" src="data:image/png;base64,{png}">'
        f"<figcaption>{escape(caption)}</figcaption>{_mechanisms(record)}</figure>"
    )


def _mechanisms(record) -> str:
    """The numpy reference's split of each layer's change by mechanism, where any moved relevance."""
    leaks = record.get("leaks")
    if not leaks or not leaks.get("layers") or leaks["verdict"] == "conserved":  # nothing to split but float noise
        return ""
    columns = (*MECHANISMS, UNEXPLAINED)
    # What stays within the rule's tolerance is float noise, not a leak worth a row.
    tolerance = record["tolerance"]
    bound = tolerance["atol"] + tolerance["rtol"] * abs(float(record["targets"][leaks["sample"]]))
    rows = [entry for entry in leaks["layers"] if any(_beyond(entry.get(c), bound) for c in columns)]
    shown = [c for c in columns if any(_beyond(entry.get(c), bound) for entry in rows)]
    if not rows:
        return ""
    head = "".join(f"<th>{escape(c)}</th>" for c in shown)
    body = "".join(
        f"<tr><td>{escape(entry['name'])}</td>" + "".join(f"<td>{_signed(entry.get(c))}</td>" for c in shown) + "</tr>"
        for entry in rows
    )
    summary = (
        f"leak by mechanism (numpy reference), sample {leaks['sample']}: {record.get('leak_split') or '-'}; "
        f"declared: {', '.join(leaks['declared']) or 'none'}; verdict: {leaks['verdict']}"
    )
    return f'<table class="mechanisms"><caption>{escape(summary)}</caption><tr><th>layer</th>{head}</tr>{body}</table>'


def _beyond(value, bound: float) -> bool:
    return value is not None and (isinstance(value, str) or abs(value) > bound)  # "nan"/"inf" always show


def _signed(value) -> str:
    if value is None:
        return "-"
    return escape(value) if isinstance(value, str) else f"{value:+.4g}"


def _table_order(record):
    outcome = record["outcome"]
    rank = OUTCOME_ORDER.index(outcome) if outcome in OUTCOME_ORDER else len(OUTCOME_ORDER)
    return (rank, *_section_order(record))


def _section_order(record):
    check = record.get("check", "conservation")
    return (
        record.get("model") or "",
        record["rule"],
        CHECK_NAMES.index(check) if check in CHECK_NAMES else len(CHECK_NAMES),
    )


def _number(value) -> str:
    if value is None:
        return "-"
    return escape(value) if isinstance(value, str) else f"{value:.4g}"


def _percent(value) -> str:
    if value is None:
        return "-"
    return escape(value) if isinstance(value, str) else f"{value:.2%}"


def _params(params) -> str:
    return "(" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")" if params else ""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{style}</style></head>
<body>
{body}
<script>{script}</script>
</body></html>
"""

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{margin:0 0 .3em}h2{margin-top:1.5em;border-bottom:1px solid #ccc}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:0}dt{color:#666}dd{margin:0}
.counts{list-style:none;padding:0;display:flex;gap:1em}.counts li{padding:.1em .5em;border-radius:3px;background:#eee}
.warn{color:#b00;font-weight:bold}
table{border-collapse:collapse;font-size:13px}th,td{padding:.2em .6em;border-bottom:1px solid #e4e4e4;text-align:left;white-space:nowrap}
th{position:sticky;top:0;background:#fafafa}tr:target{background:#ffd}td:nth-child(5),td:nth-child(6){text-align:right}
.filter{margin:.5em 0}.filter label{margin-right:1em}
.badge{padding:0 .4em;border-radius:3px;text-decoration:none;color:#222}
.o-failed,.o-error,.o-xpassed-strict{background:#f8c9c9}.o-xfailed,.o-xpassed{background:#fbe6b8}.o-passed{background:#cdeccd}
section{border-top:1px solid #ccc;margin-top:1.2em}section:target{background:#fffdf0}
h3 small{color:#666;font-weight:normal}.tests{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.4em}
pre{background:#f6f6f6;padding:.5em;overflow-x:auto;font-size:12px}
.pictures{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
figure{margin:0}figcaption{font-size:12px;color:#555;max-width:36em}
.grid{display:grid;grid-template-columns:repeat(4,max-content);gap:.4em .8em}
.pair img{width:56px;image-rendering:pixelated;margin-right:2px;border:1px solid #ddd}.pair figcaption{font-size:11px}
.chart img,.comparison img{max-width:100%}.chart figcaption{max-width:450px}
.mechanisms{margin-top:.5em;font-size:12px}.mechanisms caption{text-align:left;color:#555;max-width:450px}.mechanisms td:not(:first-child){text-align:right}.top{font-size:12px}
"""

# Hides the rows whose outcome is unticked; without script every row stays visible.
SCRIPT = """
(function () {
  var boxes = document.querySelectorAll('#filter input[data-outcome]');
  function apply() {
    var hidden = {};
    boxes.forEach(function (b) { hidden[b.dataset.outcome] = !b.checked; });
    document.querySelectorAll('#results tbody tr').forEach(function (row) {
      row.hidden = !!hidden[row.dataset.outcome];
    });
  }
  boxes.forEach(function (b) { b.addEventListener('change', apply); });
  apply();
})();
"""
