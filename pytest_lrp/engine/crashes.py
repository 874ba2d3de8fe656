"""One readable line for an analyzer that crashed, instead of a traceback through TensorFlow.

An exception inside innvestigate or TensorFlow produces a traceback of a
hundred frames that says nothing about the rule; the user needs the analyzer,
the model and the exception's own message. ``-vv`` or ``--fulltrace`` bring the
full traceback back for debugging.
"""

from __future__ import annotations

import re
from typing import Callable

from ..base.errors import LrpUsageError, shown
from .upstream_fixes import ModelCheckRefused

TRACE_HINT = "-vv or --fulltrace shows the traceback"
# Eager TensorFlow errors start with the name of the wrapped function, which says nothing.
FUNCTION_NODE = re.compile(r"^\{\{function_node [^}]*\}\}\s*")


def crash_line(config, rule, model, exc: BaseException) -> str | None:
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
    refused = _layer_without_rule(exc)
    if refused:
        return (
            f"{model}: {rule.analyzer} has no rule for layer {refused} (rule '{rule.id}'): innvestigate 2.1.2's Deep Taylor "
            f"maps only ReLU activations, Dense/Conv kernels, BatchNormalization, pooling, Add, Dropout, UpSampling and "
            f"reshaping layers, and refuses any other layer"
        )
    return f"{rule.analyzer} crashed (rule '{rule.id}' on {model}): {type(exc).__name__}: {message} [{TRACE_HINT}]"


def _layer_without_rule(exc: BaseException) -> str | None:
    """'name' (Class, activation 'x') of the layer innvestigate 2.1.2's Deep Taylor refused.

    Its ``_default_reverse_mapping`` raises NotImplementedError("Layer <... object at 0x...> not
    supported."), naming the layer only by its repr; the layer itself is the ``reverse_state``
    of the frame that raised.
    """
    if not isinstance(exc, NotImplementedError) or not str(exc).endswith("not supported."):
        return None
    # The workbench raises a remembered crash again without its traceback (for the rule's other
    # checks): the first reading is kept on the exception.
    if not hasattr(exc, "_pytest_lrp_layer"):
        exc._pytest_lrp_layer = _raising_layer(exc)
    return exc._pytest_lrp_layer


def _raising_layer(exc: BaseException) -> str | None:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    state = tb.tb_frame.f_locals.get("reverse_state") if tb is not None else None
    layer = state.get("layer") if isinstance(state, dict) else None
    if layer is None:
        return None
    activation = getattr(getattr(layer, "activation", None), "__name__", None)
    detail = f", activation '{activation}'" if activation and activation != "linear" else ""
    return f"'{layer.name}' ({type(layer).__name__}{detail})"


def first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None)  # TensorFlow's OpError keeps the op's message here
    lines = [line.strip() for line in (text if isinstance(text, str) else str(exc)).splitlines() if line.strip()]
    # A graph-mode error reads "Graph execution error: / Detected at node ... / <stack> / Node: 'x' / <what happened>".
    for here, following in zip(lines, lines[1:]):
        if here.startswith("Node: "):
            return f"{following} (node {here[len('Node: ') :]})"
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
