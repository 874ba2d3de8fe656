"""The "lrp: tf.keras is Keras ..." header line under pytest-xdist.

Without xdist the line follows "collected N items" (plugin.py's pytest_report_collectionfinish).
Under xdist the controller collects nothing and never imports TensorFlow: the workers do, and
what a worker's tests got can differ from what the controller would guess (a test module that
imports TensorFlow at collection fixes tf.keras before pytest-lrp can choose). So each worker
computes the line where the plain run does, right after its collection, and sends it on its
first test report (report attributes travel to the controller, as the result records do); the
controller prints each distinct line once, before that report's progress mark.
"""

from __future__ import annotations

import pytest

from ..base import tf_runtime

ATTRIBUTE = "lrp_keras_line"
_pending_key = pytest.StashKey[str]()


def collected_lrp_tests(config: pytest.Config) -> None:
    """On an xdist worker whose session has LRP tests: the line for its first report."""
    if hasattr(config, "workerinput"):
        config.stash[_pending_key] = tf_runtime.keras_line()


class KerasLineRelay:
    """Worker side: puts the line on the first report. Controller side: prints what arrives."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.shown = set()

    @pytest.hookimpl(
        tryfirst=True
    )  # on a worker, before xdist serializes the report; on the controller, before its progress mark
    def pytest_runtest_logreport(self, report) -> None:
        line = self.config.stash.get(_pending_key, None)
        if line is not None:
            del self.config.stash[_pending_key]
            setattr(report, ATTRIBUTE, line)
            return
        line = getattr(report, ATTRIBUTE, None)
        if line is None or line in self.shown:
            return
        self.shown.add(line)
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.ensure_newline()
            if terminal._tw.width_of_current_line:  # amid progress marks (-v under xdist shows started tests' ids)
                terminal._tw.line()
            terminal.write_line(line)
