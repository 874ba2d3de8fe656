"""The table of LRP results printed at the end of the run."""

from __future__ import annotations

from ..config.rulefile import CHECK_NAMES

# Outcomes where relevance was not conserved; elsewhere the largest change is float noise.
LEAKING = ("failed", "xfailed")
COLUMNS = ("model", "rule", "analyzer", "max |error|", "max rel. error", "tolerance", "outcome", "leaking layer", "leak by mechanism")


def summary_rows(records: list) -> list:
    rows = []
    # A rule's conservation row first, its other checks after it in the order of the docs.
    order = lambda r: (r.get("model") or "", r["rule"], CHECK_NAMES.index(r.get("check", "conservation")))  # noqa: E731
    for r in sorted(records, key=order):
        leak = r.get("leak_layer")
        tol = r["tolerance"]
        conservation = r.get("check", "conservation") == "conservation"
        # The error columns are about conservation; other checks' rows would repeat them.
        rows.append((
            r.get("model") or "-",
            r["rule"] if conservation else f"{r['rule']} ({r['check']})",
            r["analyzer"],
            _format(r.get("max_error"), "{:.3g}") if conservation else "",
            _format(r.get("max_relative_error"), "{:.2%}") if conservation else "",
            f"rtol {tol['rtol']:g}, atol {tol['atol']:g}" if conservation else "",
            r["outcome"],
            f"{leak['name']} ({leak['class']})" if leak and (r["outcome"] in LEAKING or _explained(r)) else "-",
            _mechanisms(r) if conservation else "",
        ))
    return rows


def write_summary(terminalreporter, records: list) -> None:
    rows = summary_rows(records)
    if not rows:
        return
    widths = [max(len(str(row[i])) for row in rows + [COLUMNS]) for i in range(len(COLUMNS))]
    terminalreporter.section("LRP results", sep="=")
    line = lambda row: "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()  # noqa: E731
    terminalreporter.write_line(line(COLUMNS))
    for row in rows:
        terminalreporter.write_line(line(row))


def _explained(record: dict) -> bool:
    """Not conserved, but only by the leaks the rule declares: where it leaks is worth showing."""
    return (record.get("leaks") or {}).get("verdict") == "explained"


def _mechanisms(record: dict) -> str:
    """The worst sample's leak by mechanism; for a rule with `leaks:`, whether they explain it."""
    leaks = record.get("leaks")
    if not leaks or leaks["verdict"] == "conserved":
        return "-"
    declared = f" (declared: {', '.join(leaks['declared'])}; {leaks['verdict']})" if leaks["declared"] else ""
    return (record.get("leak_split") or "-") + declared


def _format(value, pattern: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # "nan" / "inf" kept as text in the records
        return value
    return pattern.format(value)
