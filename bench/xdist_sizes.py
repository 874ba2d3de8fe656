"""Where `pytest -n 2` pays off: the same suite serial and on two workers, for a small and a larger network.

    python bench/xdist_sizes.py            # prints the table; --update writes bench/last_run_xdist.json

Suites: the example suite (`rules.yaml`: the small digits CNN, 16 inputs), and the packaged suite on a larger
CNN (64x64x3 inputs, 32-64-128 filters, random weights, 16 seeded random inputs) made here. Each is run
serial and with `-n 2`, alternating, twice; the fastest run of each counts (load on a shared machine only ever
slows a run down, `-n 2` most). Outcomes must be the same.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from common import RESULTS, ROOT, junit, pytest_cmd, run

LAST_RUN = ROOT / "bench" / "last_run_xdist.json"
REPEATS = 2


def larger_cnn(folder: Path) -> Path:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    layers = tf.keras.layers
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [
            layers.Conv2D(32, 3, padding="same", activation="relu", input_shape=(64, 64, 3)),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(128, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(10),
        ]
    )
    path = folder / "larger.h5"
    model.save(path)
    return path


def measure(args: list, cwd: Path, env: dict) -> dict:
    result: dict = {"n0": [], "n2": []}
    outcomes = []
    for _ in range(REPEATS):
        for workers in (0, 2):
            xml = RESULTS / f"xdist_sizes{workers}.xml"
            measured = run(pytest_cmd(*args, "-n", workers, f"--junitxml={xml}"), env, cwd=cwd)
            outcomes.append({name: outcome for name, _, outcome in junit(xml)} if xml.exists() else {})
            result[f"n{workers}"].append(measured["seconds"])
    serial, parallel = min(result["n0"]), min(result["n2"])
    return {
        "tests": len(outcomes[0]),
        "serial_seconds": serial,
        "n2_seconds": parallel,
        "speedup": round(serial / parallel, 2),
        "same_outcomes": all(o == outcomes[0] for o in outcomes) and bool(outcomes[0]),
        "runs": result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--update", action="store_true")
    args = parser.parse_args()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0")
    env.pop("PYTEST_ADDOPTS", None)
    RESULTS.mkdir(exist_ok=True)
    results = {"example": measure(["rules.yaml"], ROOT, env)}
    print("example", {k: v for k, v in results["example"].items() if k != "runs"}, flush=True)
    with tempfile.TemporaryDirectory() as folder:
        model = larger_cnn(Path(folder))
        results["larger"] = measure([f"--lrp-model={model}", "--lrp-samples=16"], Path(folder), env)
    print("larger", {k: v for k, v in results["larger"].items() if k != "runs"}, flush=True)
    document = {"suites": results, "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}
    if args.update:
        LAST_RUN.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
