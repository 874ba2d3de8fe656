"""Extra analyses that some checks need, run with the analyzer already built for the rule.

Building an analyzer costs seconds, running it milliseconds, so `determinism` and
`batch_invariance` reuse the graph and analyzer of the analysis they are checked
against instead of building their own.
"""

from __future__ import annotations

from ..base.lazy import np

# check name -> key of the extra heatmaps it compares with the analysis
RERUNS = {"determinism": "repeat", "batch_invariance": "alone"}


def reruns_needed(rule) -> tuple:
    """Part of the analysis cache key: the same rule with other reruns is another analysis."""
    return tuple(c for c in rule.checks if c in RERUNS)


def extra_runs(rule, run, x: np.ndarray) -> dict:
    """``run(batch)`` analyzes a batch; returns the heatmaps the rule's checks compare against."""
    runs = {}
    if "determinism" in rule.checks:
        runs["repeat"] = np.asarray(run(x))
    if "batch_invariance" in rule.checks:
        # innvestigate#91: a sample's heatmap depended on the batch it was analyzed in.
        runs["alone"] = np.concatenate([np.asarray(run(x[i : i + 1])) for i in range(len(x))])
    return runs
