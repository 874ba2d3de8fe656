"""Under pytest-xdist, the tests of one analysis run on one worker.

A rule file gives several tests per (model, rule), one per check
(``conservation[cnn-z]``, ``finite[cnn-z]``, ...), and they all read the same
analysis. Each worker caches analyses and loaded models in its own Workbench, so
xdist's default ``--dist load``, which hands out single tests round-robin, made
two workers build the same analyzer twice: ``-n 2`` was slower than ``-n 0``
(measured in bench/). This scheduler is ``--dist load`` with one change: the
tests of a (rule file, model, rule) form one work unit. Every other test is a
unit of its own, as under ``load``. Units are handed out in collection order
(model by model), so each worker loads a model once, when it first gets one of
its rules, and keeps it.

Imported only from the ``pytest_xdist_make_scheduler`` hook, that is, when
pytest-xdist runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling


class AnalysisScheduling(LoadScopeScheduling):
    def __init__(self, config: pytest.Config, log=None) -> None:
        super().__init__(config, log)
        from .engine.workbench import workbench_key

        self._rules_path = config.stash[workbench_key].rules_path
        self._root = config.rootpath

    def _split_scope(self, nodeid: str) -> str:
        return analysis_scope(nodeid, self._root, self._rules_path)


def analysis_scope(nodeid: str, root: Path, rules_path: Path) -> str:
    """``rules.yaml::finite[cnn-z]`` -> ``rules.yaml::[cnn-z]``; any other test is its own scope."""
    from .config.rulefile import CHECK_NAMES

    file, _, name = nodeid.rpartition("::")
    check, bracket, params = name.partition("[")
    if bracket and check in CHECK_NAMES and (root / file).resolve() == rules_path:
        return f"{file}::[{params}"
    return nodeid


def make_scheduler(config: pytest.Config, log):
    """Our scheduler for ``--dist load`` (what ``-n N`` uses by default); None leaves any other mode to xdist."""
    if config.getvalue("dist") != "load":
        return None
    return AnalysisScheduling(config, log)
