"""Golden heatmaps: the whole workflow of the `baseline` check, run by pytester."""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import metadata

import numpy as np
import pytest

BASELINE = "lrp_baselines/net/z.npz"


@pytest.fixture
def project(lrp_project, pytester):
    """The biased net copied to net.h5 (so the test can replace it) and one rule with only the baseline check."""
    shutil.copy(lrp_project.biased.path, pytester.path / "net.h5")
    lrp_project.rules(f"""
defaults:
  models: [net.h5]
  inputs: {lrp_project.inputs}
rules:
  - id: z
    analyzer: lrp.z
    checks: [baseline]
""")
    return lrp_project


def load(path):
    with np.load(path, allow_pickle=False) as data:
        return data["heatmaps"], json.loads(str(data["metadata"]))


def test_missing_then_written_then_passing_then_a_changed_heatmap_fails(project, pytester):
    path = pytester.path / BASELINE
    first = pytester.runpytest("rules.yaml")
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(
        [
            f"no baseline for rule 'z' on net: {BASELINE} does not exist; "
            "run pytest with --lrp-update-baselines to write it from the current heatmaps"
        ]
    )
    assert not (pytester.path / "lrp_baselines").exists(), "nothing may be written without the flag"

    update = pytester.runpytest("rules.yaml", "--lrp-update-baselines")
    update.assert_outcomes(passed=1)
    update.stdout.fnmatch_lines(["*lrp: wrote 1 baseline*", f"wrote {BASELINE} (new)"])
    heatmaps, meta = load(path)
    x = np.load(project.inputs)["x"]
    np.testing.assert_allclose(heatmaps, project.biased.lrp_z(x), rtol=1e-4, atol=1e-6)
    assert meta["model_sha256"] == hashlib.sha256((pytester.path / "net.h5").read_bytes()).hexdigest()
    assert meta["inputs_sha256"] == hashlib.sha256(x.astype(np.float32).tobytes()).hexdigest()
    assert (meta["analyzer"], meta["params"], meta["target"], meta["inputs_shape"]) == ("lrp.z", {}, "output", [6, 5])
    assert meta["versions"] == {name: metadata.version(name) for name in ("tensorflow", "keras", "innvestigate")}
    written = path.read_bytes()

    again = pytester.runpytest("rules.yaml")
    again.assert_outcomes(passed=1)
    up_to_date = pytester.runpytest("rules.yaml", "--lrp-update-baselines")
    up_to_date.assert_outcomes(passed=1)
    up_to_date.stdout.fnmatch_lines(["lrp: --lrp-update-baselines: no baseline written (all present and matching)"])
    assert path.read_bytes() == written

    # What a library upgrade that changes heatmaps looks like: same model, same
    # inputs, the stored heatmaps differ in two values, one of them far outside.
    changed = heatmaps.copy()
    changed[2, 3] += 0.5
    changed[4, 0] -= 0.01
    np.savez(path, heatmaps=changed, metadata=np.array(json.dumps(meta)))
    before = path.read_bytes()
    mismatch = pytester.runpytest("rules.yaml", "--lrp-heatmaps=images")
    mismatch.assert_outcomes(failed=1)
    expected, current = changed.astype(np.float64), heatmaps.astype(np.float64)
    correlation = np.corrcoef(expected.ravel(), current.ravel())[0, 1]
    sample_correlation = np.corrcoef(expected[2], current[2])[0, 1]
    mismatch.stdout.fnmatch_lines(
        [
            f"heatmaps differ from the baseline {BASELINE} (lrp.z on net; baseline_tolerance rtol=0.0001, atol=1e-06)",
            f"max abs difference 0.5; 2 of 30 values (6.67%) outside the tolerance; correlation baseline vs current {correlation:.6f}",
            f"worst sample 2: max abs difference 0.5 at index (3) ({changed[2, 3]:.6g} baseline, {heatmaps[2, 3]:.6g} current); "
            f"1 of 5 values outside the tolerance; correlation {sample_correlation:.6f}",
            "baseline / current / difference image: images/baselines/net/z.png",
            "if the change is intended, run with --lrp-update-baselines to accept the current heatmaps",
        ]
    )
    assert "the rule changed" not in mismatch.stdout.str() and "recorded with" not in mismatch.stdout.str()
    assert path.read_bytes() == before, "a failing run must leave the baseline byte for byte"
    assert (pytester.path / "images/baselines/net/z.png").read_bytes().startswith(b"\x89PNG")

    accept = pytester.runpytest("rules.yaml", "--lrp-update-baselines")
    accept.assert_outcomes(passed=1)
    accept.stdout.fnmatch_lines([f"wrote {BASELINE} (changed)"])
    np.testing.assert_array_equal(load(path)[0], heatmaps)


def test_another_model_or_other_inputs_are_named_instead_of_a_diff(project, pytester):
    path = pytester.path / BASELINE
    pytester.runpytest("rules.yaml", "--lrp-update-baselines").assert_outcomes(passed=1)
    recorded = path.read_bytes()
    old_digest = load(path)[1]["model_sha256"]

    shutil.copy(project.nobias.path, pytester.path / "net.h5")
    new_digest = hashlib.sha256((pytester.path / "net.h5").read_bytes()).hexdigest()
    other_model = pytester.runpytest("rules.yaml")
    other_model.assert_outcomes(failed=1)
    other_model.stdout.fnmatch_lines(
        [
            f"heatmaps differ from the baseline {BASELINE}, but it was recorded for another model file "
            f"(sha256 {old_digest[:12]}..., now {new_digest[:12]}...), so a comparison would mean nothing (lrp.z on net); "
            "if the change is intended, run with --lrp-update-baselines to record the current heatmaps"
        ]
    )
    assert "max abs difference" not in other_model.stdout.str()
    assert path.read_bytes() == recorded

    shutil.copy(project.biased.path, pytester.path / "net.h5")
    pytester.runpytest("rules.yaml").assert_outcomes(passed=1)
    fewer = pytester.runpytest("rules.yaml", "--lrp-samples=3")
    fewer.assert_outcomes(failed=1)
    fewer.stdout.fnmatch_lines(
        ["*but it was recorded for other inputs (sha256 *... of shape (6, 5), now *... of shape (3, 5))*"]
    )
    assert path.read_bytes() == recorded

    path.write_bytes(b"not a baseline")
    broken = pytester.runpytest("rules.yaml")
    broken.assert_outcomes(failed=1)
    broken.stdout.fnmatch_lines([f"baseline {BASELINE} cannot be read (*); --lrp-update-baselines writes it anew"])
    assert path.read_bytes() == b"not a baseline"
    repaired = pytester.runpytest("rules.yaml", "--lrp-update-baselines")
    repaired.stdout.fnmatch_lines([f"wrote {BASELINE} (unreadable)"])
    assert load(path)[1]["model_sha256"] == old_digest


def test_a_changed_rule_is_diffed_and_named(project, pytester):
    pytester.runpytest("rules.yaml", "--lrp-update-baselines").assert_outcomes(passed=1)
    project.rules(f"""
defaults:
  models: [net.h5]
  inputs: {project.inputs}
rules:
  - id: z
    analyzer: lrp.epsilon
    params: {{epsilon: 0.5}}
    baseline: true
    checks: [finite]
""")
    result = pytester.runpytest("rules.yaml", "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            f"heatmaps differ from the baseline {BASELINE} (lrp.epsilon on net; *)",
            "max abs difference *; * of 30 values (*) outside the tolerance; correlation baseline vs current *",
            "worst sample *",
            "the rule changed since the baseline was recorded: analyzer 'lrp.z', now 'lrp.epsilon'; params {}, now {'epsilon': 0.5}",
        ]
    )


def test_baseline_folder_from_flag_and_ini_and_no_update_from_the_ini(project, pytester):
    flag = pytester.runpytest("rules.yaml", "--lrp-baselines=golden", "--lrp-update-baselines")
    flag.stdout.fnmatch_lines(["wrote golden/net/z.npz (new)"])
    assert (pytester.path / "golden/net/z.npz").is_file()
    (pytester.path / "config").mkdir()
    # Only the command line may write: an ini file that asks for updates is ignored.
    pytester.makeini("[pytest]\nlrp_baselines = ../stored\nlrp_update_baselines = true\n")
    shutil.move(pytester.path / "tox.ini", pytester.path / "config" / "tox.ini")
    by_ini = pytester.runpytest("rules.yaml", "-c", "config/tox.ini")
    by_ini.assert_outcomes(failed=1)
    by_ini.stdout.fnmatch_lines(["no baseline for rule 'z' on net: stored/net/z.npz does not exist;*"])
    assert not (pytester.path / "stored").exists()


@pytest.mark.xdist
def test_update_under_xdist_writes_each_baseline_once_and_reports_them(lrp_project, pytester):
    lrp_project.rules(f"""
defaults:
  inputs: {lrp_project.inputs}
  checks: [baseline]
rules:
  - id: z
    analyzer: lrp.z
  - id: flat
    analyzer: lrp.flat
""")
    models = (f"--lrp-model={lrp_project.nobias.path}", f"--lrp-model={lrp_project.biased.path}")
    update = pytester.runpytest("rules.yaml", *models, "-n", "2", "--lrp-update-baselines")
    update.assert_outcomes(passed=4)
    update.stdout.fnmatch_lines(
        [
            "*lrp: wrote 4 baselines*",
            "wrote lrp_baselines/biased/flat.npz (new)",
            "wrote lrp_baselines/biased/z.npz (new)",
            "wrote lrp_baselines/nobias/flat.npz (new)",
            "wrote lrp_baselines/nobias/z.npz (new)",
        ]
    )
    assert sorted(p.name for p in (pytester.path / "lrp_baselines").rglob("*")) == [
        "biased",
        "flat.npz",
        "flat.npz",
        "nobias",
        "z.npz",
        "z.npz",
    ]
    pytester.runpytest("rules.yaml", *models, "-n", "2").assert_outcomes(passed=4)


def test_an_interrupted_write_leaves_the_old_baseline_whole(project, pytester):
    path = pytester.path / BASELINE
    pytester.runpytest("rules.yaml", "--lrp-update-baselines").assert_outcomes(passed=1)
    heatmaps, meta = load(path)
    np.savez(path, heatmaps=heatmaps + 1.0, metadata=np.array(json.dumps(meta)))
    before = path.read_bytes()
    # The writer dies after half a file, as a killed run would; the baseline must be the old one, whole.
    pytester.makeconftest("""
        import numpy as np

        original = np.savez_compressed

        def dies_halfway(file, **arrays):
            file.write(b"PK\\x03\\x04 half a zip")
            raise RuntimeError("killed while writing")

        def pytest_configure(config):
            np.savez_compressed = dies_halfway

        def pytest_unconfigure(config):
            np.savez_compressed = original
    """)
    result = pytester.runpytest("rules.yaml", "--lrp-update-baselines")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*RuntimeError: killed while writing*"])
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["z.npz"], "no temporary file may be left behind"
