"""What the bench scripts share: paths, running a measured subprocess, pytest's command and junit
results, rule files, and copies of the project at another git revision.

The scripts import this module and nothing of each other's (bench/run.py imports bench/deep.py's
sections, bench/deep.py only this), so the imports point one way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def run(cmd: list, env: dict, cwd: Path = ROOT, tail_lines: int = 3) -> dict:
    """Run ``cmd``; wall and CPU seconds, peak RSS (MB) of the largest process, exit code, output tail.

    Parameters
    ----------
    cmd : list
        The command and its arguments.
    env : dict
        The child's whole environment.
    cwd : Path
        The folder it runs in (the project's root by default).
    tail_lines : int
        How many of the last lines of its output (stdout and stderr together) to keep.
    """
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        tail = out.read().decode(errors="replace").strip().splitlines()[-tail_lines:]
    return {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "exit": proc.returncode,
        "tail": tail,
    }


def pytest_cmd(*args) -> list:
    """``python -m pytest -q`` without the cache plugin, with ``args`` (converted to text)."""
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *map(str, args)]


def junit(path: Path) -> list:
    """[(test name, seconds, outcome)] in the order the tests ran (for xdist: finished)."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
            elif child.tag == "skipped":
                outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
        rows.append((case.get("name"), float(case.get("time")), outcome))
    return rows


def write_yaml(path: Path, data: dict) -> Path:
    """``data`` as YAML at ``path`` (keys in their order); returns ``path``."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def resolve(revision: str) -> str:
    """The short commit hash of a git revision of this checkout (a branch, tag, hash, ``HEAD~3``, ...).

    Raises
    ------
    ValueError
        If git does not know the revision.
    """
    found = subprocess.run(
        ["git", "rev-parse", "--short", "--verify", "--quiet", f"{revision}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise ValueError(f"{revision!r} is not a commit of this git checkout")
    return found.stdout.strip()


def archive(revision: str, tree: Path) -> Path:
    """The project at git ``revision`` in a new folder ``tree`` (`git archive`, no .git): run with
    ``PYTHONPATH=tree`` and ``cwd=tree``, its pytest_lrp comes before the installed one."""
    tree.mkdir()
    files = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=files, check=True)
    return tree
