"""Atomic writes leave either the old file or the whole new one, readable like any new file."""

from __future__ import annotations

import os
import stat

import pytest

from pytest_lrp.base.atomic import write_atomically


def test_written_file_gets_the_mode_a_plain_open_would_give(tmp_path):
    write_atomically(tmp_path / "report.json", lambda f: f.write(b"{}"))
    with open(tmp_path / "plain.json", "wb") as f:
        f.write(b"{}")
    mode = stat.S_IMODE(os.stat(tmp_path / "report.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.json").st_mode)
    assert mode & stat.S_IROTH or os.umask(os.umask(0)) & stat.S_IROTH  # readable by others unless the umask forbids it


def test_a_write_that_dies_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "page.html"
    path.write_bytes(b"old")

    def dies(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomically(path, dies)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]
