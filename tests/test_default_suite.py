"""The default suite: shipped in the package, identical to the project's rules.yaml, portable to
networks without biases, and what `pytest --lrp-model=m.h5` runs where there is no rule file."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from pytest_lrp.config.packaged import PACKAGED_RULES, without_example

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cnn.hdf5"


def test_the_packaged_suite_is_the_projects_rules_without_the_example():
    expected = without_example((ROOT / "rules.yaml").read_text())
    assert PACKAGED_RULES.read_text() == expected, (
        "pytest_lrp/config/default_rules.yaml differs from rules.yaml; rules.yaml is the source: "
        "python -c \"from pytest_lrp.config.packaged import *; PACKAGED_RULES.write_text(without_example(open('rules.yaml').read()))\""
    )
    assert "models:" not in PACKAGED_RULES.read_text() and "samples:" not in PACKAGED_RULES.read_text()


def test_write_rules_writes_an_editable_copy_and_never_overwrites(pytester):
    result = pytester.runpytest("--lrp-write-rules=suite/rules.yaml")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["wrote suite/rules.yaml: pytest-lrp's default rule suite; edit it, then run pytest --lrp-model=YOUR_MODEL"]
    )
    assert (pytester.path / "suite" / "rules.yaml").read_bytes() == PACKAGED_RULES.read_bytes()
    again = pytester.runpytest("--lrp-write-rules=suite/rules.yaml")
    assert again.ret == pytest.ExitCode.USAGE_ERROR
    again.stderr.fnmatch_lines(
        ["ERROR: suite/rules.yaml: already exists; --lrp-write-rules does not overwrite a rule file *"]
    )


def _packaged_ids(model: str) -> list:
    from pytest_lrp.config.rulefile import load_rule_file

    rules = load_rule_file(PACKAGED_RULES).rules
    return sorted(f"default_rules.yaml::{check}[{model}-{rule.id}]" for rule in rules for check in rule.checks)


def test_without_a_rule_file_a_model_gets_the_packaged_suite(pytester, lrp_project):
    result = pytester.runpytest(f"--lrp-model={lrp_project.nobias.path}", "--collect-only", "-q")
    collected = sorted(line for line in result.outlines if line.startswith("default_rules.yaml::"))
    assert collected == _packaged_ids("nobias")
    result = pytester.runpytest(
        f"--lrp-model={lrp_project.nobias.path}",
        f"--lrp-inputs={lrp_project.inputs}",
        "-k",
        "conservation and (z or w-square)",
    )
    # Said once, in the header (also under pytest-xdist, whose controller collects nothing).
    result.stdout.fnmatch_lines(
        [
            "lrp: no rule file (*rules.yaml not found): without LRP tests of your own, pytest-lrp's default suite runs "
            "(pytest --lrp-write-rules=rules.yaml writes an editable copy); a final softmax is stripped*",
            f"collected {len(collected)} items / * deselected / * selected",
        ]
    )
    assert result.stdout.str().count("default suite") == 1 and "lrp: inputs:" not in result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 2 and not outcomes.get("failed") and not outcomes.get("errors")


def test_lrp_tests_of_ones_own_keep_their_run(pytester, lrp_project):
    pytester.makepyfile(
        test_mine="""
        def test_model(lrp_model):
            assert lrp_model.name == "nobias"
    """
    )
    result = pytester.runpytest(f"--lrp-model={lrp_project.nobias.path}")
    result.assert_outcomes(passed=1)
    assert "default_rules.yaml" not in result.stdout.str()


# --- innvestigate's own test networks ---------------------------------------------------------


@pytest.fixture(scope="module")
def innvestigate_networks(tmp_path_factory, tensorflow_imported_once) -> list:
    """mlp_2dense and cnn_2conv_2dense as innvestigate's tests/networks/base.py defines them for MNIST
    (tests/networks/mnist.py: 28x28x1, 512 dense units, dropout 0.25, 10 outputs), fresh weights: every
    bias zero. In innvestigate's file the CNN's Flatten reads the input, not the convolutions, which
    leaves them unused; here the convolutions feed it, as the name says."""
    tf = tensorflow_imported_once
    layers = tf.keras.layers
    tf.keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("innvestigate_networks")

    def conv():
        return layers.Conv2D(
            32, (5, 5), strides=(1, 1), padding="same", activation="relu", kernel_initializer="glorot_uniform"
        )

    def pool():
        return layers.MaxPooling2D(pool_size=(2, 2), strides=(2, 2), padding="same")

    paths = []
    for name, body in (("mlp_2dense", []), ("cnn_2conv_2dense", [conv(), pool(), conv(), pool()])):
        x = inputs = layers.Input(shape=(28, 28, 1))
        for layer in [*body, layers.Flatten(), layers.Dense(512, activation="relu")]:
            x = layer(x)
        x = layers.Dropout(0.25)(x, training=False)
        model = tf.keras.Model(inputs, layers.Dense(10)(x), name=name)
        assert not any(w.any() for w in model.get_weights() if w.ndim == 1), "fresh weights have zero biases"
        paths.append(folder / f"{name}.h5")
        model.save(paths[-1])
    return paths


@pytest.mark.default_suite
def test_the_default_suite_gives_no_failure_on_networks_without_biases(pytester, innvestigate_networks):
    """27 conservation tests failed here before leaks: (mostly XPASS(strict): nothing for a bias to absorb)."""
    result = pytester.runpytest(*[f"--lrp-model={path}" for path in innvestigate_networks], "--lrp-samples=2", "-rxX")
    outcomes = result.parseoutcomes()
    assert not outcomes.get("failed") and not outcomes.get("errors") and not outcomes.get("xpassed"), (
        result.stdout.str()[-3000:]
    )
    assert outcomes["passed"] + outcomes.get("xfailed", 0) == 2 * len(_packaged_ids("m")), outcomes
    # what still leaks without biases leaks by its formula (alpha-beta's unbalanced neurons, z+ dropping), and says so
    reasons = [line for line in result.stdout.lines if line.startswith("XFAIL ")]
    assert len(reasons) == outcomes.get("xfailed", 0)
    assert all(" - leaks by its formula: " in line for line in reasons), reasons
    assert not any("bias" in line.split(" - leaks by its formula: ")[1].split(" at ")[0] for line in reasons), reasons


# --- the built wheel, installed into a fresh venv, in an empty folder -------------------------


@pytest.mark.wheel
def test_the_wheel_ships_the_suite_and_runs_it_in_an_empty_folder(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("pytest_lrp-*.whl")
    environment = tmp_path / "venv"
    # Its own site-packages first, the machine's (TensorFlow, innvestigate) after: nothing is downloaded.
    venv.create(environment, system_site_packages=True, with_pip=True)
    python = environment / "bin" / "python"
    if sys.prefix != sys.base_prefix:
        # Run from a venv (CI's), system_site_packages reaches the base interpreter's packages, not
        # this venv's: a .pth puts this one's after the new venv's own.
        own = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
        )
        outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        (Path(own.stdout.strip()) / "outer_site_packages.pth").write_text("\n".join(sorted(outer)) + "\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    empty = tmp_path / "project"
    empty.mkdir()
    (empty / "cnn.hdf5").write_bytes(EXAMPLE.read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    where = subprocess.run(
        [str(python), "-c", "import pytest_lrp; print(pytest_lrp.__file__)"],
        capture_output=True,
        text=True,
        cwd=empty,
        env=env,
    )
    assert where.stdout.startswith(str(environment)), where.stdout + where.stderr  # the wheel, not this checkout
    run = subprocess.run(
        [str(python), "-m", "pytest", "--lrp-model=cnn.hdf5", "-p", "no:cacheprovider", "-k", "w-square"],
        capture_output=True,
        text=True,
        cwd=empty,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert (
        "pytest-lrp's default suite" in run.stdout
        and "--lrp-write-rules=rules.yaml writes an editable copy" in run.stdout
    )
    assert "5 passed" in run.stdout, run.stdout[-2000:]
    write = subprocess.run(
        [str(python), "-m", "pytest", "--lrp-write-rules=rules.yaml"],
        capture_output=True,
        text=True,
        cwd=empty,
        env=env,
    )
    assert write.returncode == 0 and (empty / "rules.yaml").read_bytes() == PACKAGED_RULES.read_bytes()
