"""Text that fits the terminal: the LRP results section and the failure details of LRP tests.

The width is the one pytest's own terminal writer uses (``terminalreporter._tw.fullwidth``:
COLUMNS, else the terminal's size, else 80).
"""

from __future__ import annotations

import textwrap

ELLIPSIS = "..."  # as pytest's short test summary abbreviates
CONTINUATION = 4  # a wrapped line's continuation: its own indent plus this many spaces


def wrap_to_width(text: str, width: int, indent: int = CONTINUATION) -> str:
    """Every line of ``text`` at most ``width`` characters wide.

    Parameters
    ----------
    text : str
        One or more lines; lines that fit are kept exactly (tables keep their alignment).
    width : int
        The widest line allowed.
    indent : int
        Extra indent of a long line's continuation lines, beyond the line's own leading spaces.

    Returns
    -------
    str
        The lines joined by newlines; a long line breaks at spaces, a word wider than the
        width is cut.
    """
    width = max(width, 8)
    lines = []
    for line in text.splitlines():
        if len(line) <= width:
            lines.append(line)
            continue
        own = len(line) - len(line.lstrip(" "))
        lead = " " * min(own, width // 2)
        follow = " " * min(own + indent, width // 2)
        lines.extend(
            textwrap.wrap(
                line.strip(" "),
                width,
                initial_indent=lead,
                subsequent_indent=follow,
                break_on_hyphens=False,
                drop_whitespace=True,
            )
            or [""]
        )
    return "\n".join(lines)


def abbreviate(text: str, width: int) -> str:
    """``text`` on one line of at most ``width`` characters, cut with "..." where longer.

    Parameters
    ----------
    text : str
        Its line breaks become "; "; its leading spaces are kept.
    width : int
        The widest result allowed.
    """
    parts = [part.rstrip() for part in text.splitlines() if part.strip()]
    line = "; ".join(parts[:1] + [part.strip() for part in parts[1:]])  # the first line keeps its indent
    if len(line) <= width:
        return line
    return line[: max(width - len(ELLIPSIS), 0)].rstrip() + ELLIPSIS


class FittedText(str):
    """A report's text (``report.longrepr``) that wraps to the width of the terminal it is printed on.

    A ``str``: the short test summary, JUnit XML and pytest-xdist read the text unchanged;
    only ``toterminal``, which pytest calls to print the failure details, wraps it.
    """

    def toterminal(self, out) -> None:
        out.line(wrap_to_width(str(self), out.fullwidth))
