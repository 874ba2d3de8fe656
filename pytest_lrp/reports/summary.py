"""The "LRP results" section printed at the end of the run.

It follows pytest's conventions and fits the width pytest's terminal writer reports:

- by default, one line per model (its tests' outcomes and how its rules conserve relevance),
  then one line for each test that needs attention: failed, error, xfailed (with its reason),
  xpassed;
- ``-q``: the model lines and the failures and errors only;
- ``-v``: the model line and a table of every test (columns dropped as the width demands,
  the leak by mechanism wrapped);
- ``--lrp-no-summary``: nothing (reporting.py).
"""

from __future__ import annotations

from ..config.rulefile import CHECK_NAMES
from .width import abbreviate, wrap_to_width

# Outcomes where relevance was not conserved; elsewhere the largest change is float noise.
LEAKING = ("failed", "xfailed")
# Rows shown without -v, in this order: failures, then the unexpected passes, then the expected failures.
FAILURES = ("failed", "xpassed-strict", "error")
ATTENTION = (*FAILURES, "xpassed", "xfailed")
STRICT_XPASS = "[XPASS(strict)]"
WORDS = {
    "failed": "FAILED",
    "xpassed-strict": "XPASS(strict)",
    "error": "ERROR",
    "xpassed": "XPASS",
    "xfailed": "XFAIL",
}
# The final line's counts, in pytest's order and words; a strict XPASS counts as failed, as pytest counts it.
COUNTED = (
    ("failed", ("failed", "xpassed-strict")),
    ("passed", ("passed",)),
    ("skipped", ("skipped",)),
    ("xfailed", ("xfailed",)),
    ("xpassed", ("xpassed",)),
    ("error", ("error",)),
)
# The -v table: every column that fits, dropped from the first of these as the width demands.
TABLE = (
    "rule",
    "check",
    "outcome",
    "analyzer",
    "max |error|",
    "rel. error",
    "rtol, atol",
    "leaking layer",
    "leak by mechanism, reason",
)
DROPPED_FIRST = ("analyzer", "max |error|", "leaking layer", "rtol, atol")
NARROWEST_LAST_COLUMN = 24  # below it the next column of DROPPED_FIRST goes; at 80 columns the last has 21
NARROWEST_BELOW = 16  # narrower still, the last column is printed below each row


def write_summary(terminalreporter, records: list) -> None:
    width = terminalreporter._tw.fullwidth
    lines = summary_lines(records, width, terminalreporter.config.get_verbosity())
    if not lines:
        return
    terminalreporter.write_sep("=", "LRP results")  # as pytest's own sections: after a blank line
    for line in lines:
        terminalreporter.write_line(line)


def summary_lines(records: list, width: int, verbosity: int = 0) -> list:
    """The section's lines, none wider than ``width``.

    Parameters
    ----------
    records : list
        The result records of the run (results.py), in any order.
    width : int
        The terminal's width.
    verbosity : int
        pytest's: below 0 (``-q``) only the model lines and the failures; 0 also the xfails and
        xpasses; above 0 (``-v``) every test in a table.
    """
    models = {}
    for record in sorted(records, key=_order):
        models.setdefault(record.get("model") or "-", []).append(record)
    lines = []
    for model, group in models.items():
        lines.append(wrap_to_width(model_line(model, group), width))
        if verbosity > 0:
            lines.extend(table_lines(group, width, layout_of=records))
            continue
        wanted = FAILURES if verbosity < 0 else ATTENTION
        shown = sorted((r for r in group if r["outcome"] in wanted), key=lambda r: wanted.index(r["outcome"]))
        lines.extend(_attention_lines(shown, width))
    return [line for text in lines for line in text.splitlines()]


def model_line(model: str, records: list) -> str:
    """'cnn: 21 rules, 106 tests: 105 passed, 1 xfailed; 4 rules conserve (worst: integrated-gradients,
    rel. error 0.011, rtol 0.02), 16 leak only as declared'.

    A rule conserves where its conservation test found no leak beyond the tolerance (a gradient
    method without leak accounting: where its test passed); the worst of them is the one whose
    largest relative error comes closest to its rtol. A rule leaks only as declared where the
    numpy reference explains its leak by the mechanisms of its `leaks:`.
    """
    rules = len({r["rule"] for r in records})
    counts = [(word, sum(r["outcome"] in outcomes for r in records)) for word, outcomes in COUNTED]
    outcomes = ", ".join(f"{n} {word}{'s' if word == 'error' and n != 1 else ''}" for word, n in counts if n)
    line = f"{model}: {_plural(rules, 'rule')}, {_plural(len(records), 'test')}: {outcomes}"
    conservation = [r for r in records if _conservation(r) and r.get("max_error") is not None]
    conserving = [r for r in conservation if _verdict(r) == "conserved"]
    explained = [r for r in conservation if _verdict(r) == "explained"]
    parts = []
    if conserving:
        closest = max(conserving, key=_share_of_tolerance)
        parts.append(
            f"{_plural(len(conserving), 'rule')} {'conserves' if len(conserving) == 1 else 'conserve'} "
            f"(worst: {closest['rule']}, rel. error {_format(closest['max_relative_error'], '{:.2g}')}, "
            f"rtol {closest['tolerance']['rtol']:g})"
        )
    if explained:
        parts.append(f"{len(explained)} {'leaks' if len(explained) == 1 else 'leak'} only as declared")
    return line + ("; " + ", ".join(parts) if parts else "")


def table_lines(records: list, width: int, layout_of=None) -> list:
    """Every test of ``records`` in a table that fits ``width``, its last column wrapped.

    ``layout_of``: the records whose rows choose the columns and their widths (all models' in a
    run, so that every model's table has the same columns); by default ``records``.
    """
    rows = [_table_row(r) for r in records]
    shown, widths = _layout([_table_row(r) for r in layout_of] if layout_of else rows, width)
    fixed = sum(widths[:-1]) + 2 * (len(widths) - 1)  # where the last column starts
    if width - fixed < NARROWEST_BELOW:  # a very narrow terminal: the last column goes below its row
        fixed, last = 4, width - 4
    else:
        last = width - fixed
    lines = []
    for row in [TABLE, *rows]:
        cells = [str(row[i]) for i in shown]
        head = "  ".join(cell.ljust(w) for cell, w in zip(cells[:-1], widths[:-1]))
        wrapped = wrap_to_width(cells[-1], last, indent=0).splitlines() or [""]
        if fixed == 4:
            lines.append(abbreviate(head.rstrip(), width))
            wrapped = ["", *wrapped] if wrapped != [""] else []
        else:
            lines.append(abbreviate((head + "  " + wrapped[0]).rstrip(), width))
        lines.extend(abbreviate(" " * fixed + more, width) for more in wrapped[1:])
    return lines


def _layout(rows: list, width: int) -> tuple:
    """The columns shown (indices into TABLE) and their widths: all that leave the last column
    NARROWEST_LAST_COLUMN characters (or what it needs), dropping DROPPED_FIRST's in its order."""
    columns = list(TABLE)
    while True:
        shown = [TABLE.index(c) for c in columns]
        widths = [max(len(str(row[i])) for row in [*rows, TABLE]) for i in shown]
        fixed = sum(widths[:-1]) + 2 * (len(widths) - 1)
        droppable = [c for c in DROPPED_FIRST if c in columns]
        if width - fixed >= min(NARROWEST_LAST_COLUMN, widths[-1]) or not droppable:
            return shown, widths
        columns.remove(droppable[0])


def mechanism_text(record: dict) -> str:
    """The worst sample's leak by mechanism; for a rule with `leaks:`, whether they explain it:
    'bias +557.6%, unbalanced +33.3% (declared: bias, unbalanced; explained)', or '-'."""
    leaks = record.get("leaks")
    if not leaks or leaks["verdict"] == "conserved":
        return "-"
    declared = f" (declared: {', '.join(leaks['declared'])}; {leaks['verdict']})" if leaks["declared"] else ""
    return (record.get("leak_split") or "-") + declared


def attention_text(record: dict) -> str:
    """Why a test needs a look, in one line: its error against the tolerance, and its reason or message."""
    numbers = _numbers(record)
    why = _why(record)
    return f"{numbers}: {why}" if numbers else why


def _numbers(record: dict) -> str:
    """A conservation test's largest relative error; for a failure, the limit it broke."""
    rel = record.get("max_relative_error")
    if not _conservation(record) or rel is None:
        return ""
    text = _percent(rel)
    if record["outcome"] == "failed":
        ceiling = record.get("max_error_ceiling")
        above = ceiling is not None and (isinstance(rel, str) or rel > ceiling)
        text += f" (ceiling max_error {ceiling:g})" if above else f" (rtol {record['tolerance']['rtol']:g})"
    return text


def _why(record: dict) -> str:
    """The xfail reason; the leak by mechanism of a conservation failure; else the failure's first line."""
    outcome = record["outcome"]
    if outcome in ("xfailed", "xpassed"):
        return record.get("reason") or "expected to fail"
    message = _first_line(record.get("message"))
    if outcome == "xpassed-strict":  # pytest's message: "[XPASS(strict)] reason"; the row's word says XPASS(strict)
        return message.removeprefix(STRICT_XPASS).strip() or "expected to fail"
    split = mechanism_text(record) if _conservation(record) else "-"
    if outcome == "failed" and split != "-":
        layer = record.get("leak_layer")
        return split + (f" at {layer['name']}" if layer else "")
    return message or outcome


def _attention_lines(records: list, width: int) -> list:
    if not records:
        return []
    word = max(len(WORDS[r["outcome"]]) for r in records)
    labels = [_label(r) for r in records]
    label = min(max(len(text) for text in labels), max(width // 3, 12))
    lines = []
    for r, text in zip(records, labels):
        start = f"  {WORDS[r['outcome']].ljust(word)}  {abbreviate(text, label).ljust(label)}  "
        lines.append(abbreviate(start + attention_text(r), width))
    return lines


def notes_text(record: dict) -> str:
    """The -v table's (and the HTML table's) last column: the leak by mechanism with the verdict on
    the declared leaks, and for a test that needs attention its reason or message; '' when neither."""
    notes = [mechanism_text(record)] if _conservation(record) else []
    if record["outcome"] in ATTENTION:
        why = _why(record)
        notes = [why] if notes and why.startswith(notes[0]) else [*notes, why]
    return "; ".join(n for n in notes if n != "-")


def leak_layer_text(record: dict) -> str:
    """'conv2d (Conv2D)' where relevance was not conserved (also where the declared leaks explain it); else ''."""
    leak = record.get("leak_layer")
    return f"{leak['name']} ({leak['class']})" if leak and (record["outcome"] in LEAKING or _explained(record)) else ""


def _table_row(r: dict) -> tuple:
    conservation = _conservation(r)
    tol = r["tolerance"]
    return (
        r["rule"],
        r.get("check", "conservation"),
        r["outcome"],
        r["analyzer"],
        _format(r.get("max_error"), "{:.3g}") if conservation else "",
        _percent(r.get("max_relative_error")) if conservation else "",
        f"{tol['rtol']:g}, {tol['atol']:g}" if conservation else "",
        leak_layer_text(r),
        notes_text(r),
    )


def _conservation(record: dict) -> bool:
    return record.get("check", "conservation") == "conservation"


def _label(record: dict) -> str:
    check = record.get("check", "conservation")
    return record["rule"] if check == "conservation" else f"{record['rule']} ({check})"


def _order(r: dict) -> tuple:
    return (r.get("model") or "", r["rule"], CHECK_NAMES.index(r.get("check", "conservation")))


def _verdict(record: dict) -> str:
    """conserved | explained | not explained | not conserved; a rule without leak accounting
    (a gradient method) conserves when its test passed."""
    leaks = record.get("leaks")
    if leaks:
        return leaks["verdict"]
    return "conserved" if record["outcome"] == "passed" else "not conserved"


def _share_of_tolerance(record: dict) -> float:
    rel, rtol = record["max_relative_error"], record["tolerance"]["rtol"]
    if isinstance(rel, str):
        return float("inf")
    return rel / rtol if rtol > 0 else float("inf") if rel > 0 else 0.0


def _explained(record: dict) -> bool:
    """Not conserved, but only by the leaks the rule declares: where it leaks is worth showing."""
    return (record.get("leaks") or {}).get("verdict") == "explained"


def _first_line(text) -> str:
    return next((line.strip() for line in (text or "").splitlines() if line.strip()), "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _percent(value) -> str:
    """A relative error as a percentage: 590.96%, 3.03%, and below 1% three significant digits (0.000351%)."""
    if value is None:
        return "-"
    if isinstance(value, str):  # "nan" / "inf" kept as text in the records
        return value
    percent = value * 100
    return f"{percent:.2f}%" if abs(percent) >= 1 else f"{percent:.3g}%"


def _format(value, pattern: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return pattern.format(value)
