"""One readable line for an analyzer that crashed, instead of a traceback through TensorFlow.

An exception inside innvestigate or TensorFlow produces a traceback of a
hundred frames that says nothing about the rule; the user needs the analyzer,
the model and the exception's own message. ``-vv`` or ``--fulltrace`` bring the
full traceback back for debugging.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from ..base.errors import LrpUsageError, shown
from .speedup import ModelCheckRefused

TRACE_HINT = "-vv or --fulltrace shows the traceback"
# Eager TensorFlow errors start with the name of the wrapped function, which says nothing.
FUNCTION_NODE = re.compile(r"^\{\{function_node [^}]*\}\}\s*")


def crash_line(config, rule, model, exc: BaseException) -> Optional[str]:
    """The one-line report of ``exc`` raised while analyzing ``model`` with ``rule``, or None to show the traceback."""
    if not isinstance(exc, Exception) or isinstance(exc, LrpUsageError):
        return None
    if config.getoption("fulltrace", False) or config.get_verbosity() >= 2:
        return None
    message = first_line(exc)
    if isinstance(exc, ModelCheckRefused):
        return f"{model}: innvestigate refuses to run {rule.analyzer} on this model (rule '{rule.id}'): {exc}"
    if type(exc).__name__ == "NotAnalyzeableModelException":
        return f"{model}: innvestigate cannot analyze this model with {rule.analyzer} (rule '{rule.id}'): {message}"
    return f"{rule.analyzer} crashed (rule '{rule.id}' on {model}): {type(exc).__name__}: {message} [{TRACE_HINT}]"


def first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None)  # TensorFlow's OpError keeps the op's message here
    lines = [line.strip() for line in (text if isinstance(text, str) else str(exc)).splitlines() if line.strip()]
    # A graph-mode error reads "Graph execution error: / Detected at node ... / <stack> / Node: 'x' / <what happened>".
    for here, following in zip(lines, lines[1:]):
        if here.startswith("Node: "):
            return f"{following} (node {here[len('Node: '):]})"
    return FUNCTION_NODE.sub("", lines[0]) if lines else "no details"


def model_label(model_path) -> str:
    return shown(model_path) if model_path is not None else "no model"


def shortened(config, rule, model, compute: Callable):
    """``compute()``, with a crash turned into an LrpUsageError carrying its one line."""
    try:
        return compute()
    except Exception as exc:
        line = crash_line(config, rule, model, exc)
        if line is None:
            raise
    raise LrpUsageError(line)  # outside the except: no "during handling" chain in the report
