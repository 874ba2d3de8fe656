"""What --lrp-html costs on the example suite (issue 13 goal: at most +10% of its time).

    python bench/html_report.py            # about 5 minutes on 2 cores
    python bench/html_report.py --pairs 3

Two measurements, both within one invocation:
- end to end: `pytest rules.yaml` without and with `--lrp-html`, alternated, each a
  subprocess timed by wall clock and by its CPU time (user + system, from os.wait4; less
  disturbed than wall time by other work on a shared machine); the fastest of each counts.
- inside the run with the page: the seconds spent drawing pictures on the reports and
  writing the page, timed by a small plugin (``-p html_timer`` from this folder) that wraps
  the two functions, so the cost is known without comparing two noisy runs.
Results are printed and written to bench/results/html_report.json; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, run

TIMER = """
import functools
import json
import time

import pytest

from pytest_lrp.reports import html, html_images

spent = {"pictures": 0.0, "page": 0.0, "pictures_cpu": 0.0, "page_cpu": 0.0}


def _timed(function, key):
    @functools.wraps(function)  # pluggy reads the hook's argument names through it
    def wrapper(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - wall
            spent[key + "_cpu"] += time.process_time() - cpu
    return wrapper


html_images.attach_pictures = _timed(html_images.attach_pictures, "pictures")
html.HtmlReport.pytest_sessionfinish = _timed(html.HtmlReport.pytest_sessionfinish, "page")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    with open(config.getoption("lrp_html") + ".timing.json", "w") as f:
        f.write(json.dumps(spent))
"""


def suite(args: list, env: dict) -> dict:
    """``pytest rules.yaml`` with ``args``, measured (bench/common.py)."""
    return run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--lrp-no-summary", "rules.yaml", *args],
        env,
        tail_lines=1,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="lrp-html-bench-"))
    (folder / "html_timer.py").write_text(TIMER)
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONHASHSEED="0",
        PYTHONPATH=f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )
    page = folder / "report.html"
    runs = {"without": [], "with": []}
    load = os.getloadavg()[0]
    for i in range(args.pairs):
        # Alternated, the plain run first in one pair and second in the next.
        order = ("without", "with") if i % 2 == 0 else ("with", "without")
        for kind in order:
            extra = [f"--lrp-html={page}", "-p", "html_timer"] if kind == "with" else []
            result = suite(extra, env)
            if kind == "with":
                result["inside"] = json.loads(Path(f"{page}.timing.json").read_text())
                result["page_bytes"] = page.stat().st_size
            runs[kind].append(result)
            print(
                f"{kind:8} {result['seconds']:7.2f} s wall {result['cpu_seconds']:7.2f} s cpu  {result['tail']}",
                flush=True,
            )
    fastest = {kind: min(r["seconds"] for r in rs) for kind, rs in runs.items()}
    least_cpu = {kind: min(r["cpu_seconds"] for r in rs) for kind, rs in runs.items()}
    inside = min(r["inside"]["pictures"] + r["inside"]["page"] for r in runs["with"])
    inside_cpu = min(r["inside"]["pictures_cpu"] + r["inside"]["page_cpu"] for r in runs["with"])
    summary = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load_average_before": load,
        "runs": runs,
        "wall_ratio": round(fastest["with"] / fastest["without"], 3),
        "cpu_ratio": round(least_cpu["with"] / least_cpu["without"], 3),
        "inside_seconds": round(inside, 2),
        "inside_share_of_plain": round(inside / fastest["without"], 3),
        "inside_cpu_seconds": round(inside_cpu, 2),
        "inside_cpu_share_of_plain": round(inside_cpu / least_cpu["without"], 3),
        "page_mb": round(runs["with"][-1]["page_bytes"] / 1e6, 2),
    }
    (RESULTS / "html_report.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"fastest wall: {fastest['without']:.2f} s without, {fastest['with']:.2f} s with --lrp-html: {summary['wall_ratio']:.3f} x"
    )
    print(
        f"least cpu:    {least_cpu['without']:.2f} s without, {least_cpu['with']:.2f} s with: {summary['cpu_ratio']:.3f} x"
    )
    print(
        f"inside the run: {inside:.2f} s wall, {inside_cpu:.2f} s cpu drawing pictures and writing the page "
        f"({summary['inside_share_of_plain']:.1%} of the plain run's wall time, {summary['inside_cpu_share_of_plain']:.1%} of its cpu time); "
        f"page {summary['page_mb']} MB"
    )


if __name__ == "__main__":
    main()
