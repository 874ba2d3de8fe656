"""False alarms of the packaged default suite on models nobody chose for the tests, and faults it catches.

    python bench/false_alarms.py                    # the zoo: every model, the packaged suite, red tests per model
    python bench/false_alarms.py --models avgpool residual --samples 8
    python bench/false_alarms.py --faults           # the fault-injection matrix on one zoo model
    python bench/false_alarms.py --keep DIR         # keep the trained models and inputs in DIR

The zoo trains small Keras networks the way users train them (a few epochs of Adam on scikit-learn's
digits, scaled to 28x28 like MNIST, each with its own seed): other seeds of the example's
architecture, average pooling, strided and valid convolutions, BatchNormalization, residual blocks
with Keras' default layer names, a final Softmax layer, Dropout and global pooling, an MLP, an input
layer named `input_1`. Each is saved to .h5 and run as a user would: `pytest --lrp-model=m.h5
--lrp-inputs=digits.npz` in an empty folder (the packaged suite). A red test (failed, error,
XPASS(strict)) on these models is a false alarm: none of them has a fault.

The fault matrix runs the same suite with one fault injected into innvestigate's rules through a
plugin module (`-p`), one fault per run, and lists the tests that caught it. Results go to
bench/results/false_alarms.json and, with --update, to bench/last_run_false_alarms.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LAST_RUN = ROOT / "bench" / "last_run_false_alarms.json"
FAULT_PLUGIN = "lrp_injected_fault"


def digits_28x28(seed: int):
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images, np.ones((3, 3))) / 16.0
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order, :, :, None].astype("float32"), digits.target[order]


def _conv_stack(L, inp, pool, strides=1, padding="same", kernel=3, filters=(16, 32)):
    h = inp
    for f in filters:
        h = L.Conv2D(f, kernel, strides=strides, padding=padding, activation="relu")(h)
        if pool is not None:
            h = pool(2)(h)
    return h


def build(kind: str):
    """A fresh, untrained Keras 2 model of the zoo's kind ``kind``."""
    import tensorflow as tf

    L = tf.keras.layers
    inp = L.Input((28, 28, 1), name="input_1" if kind == "input-1" else None)
    head_softmax = "softmax"
    if kind.startswith("cnn-seed"):  # the example's architecture (the bug report's CNN)
        h = _conv_stack(L, inp, L.MaxPooling2D, filters=(32, 32))
        h = L.Dense(512, activation="relu")(L.Flatten()(h))
    elif kind == "avgpool":
        h = L.Flatten()(_conv_stack(L, inp, L.AveragePooling2D))
        h = L.Dense(64, activation="relu")(h)
    elif kind == "strided":
        h = L.Flatten()(_conv_stack(L, inp, None, strides=2))
        h = L.Dense(64, activation="relu")(h)
    elif kind == "valid":
        h = L.Flatten()(_conv_stack(L, inp, L.MaxPooling2D, padding="valid", kernel=5))
        h = L.Dense(64, activation="relu")(h)
    elif kind == "batchnorm":
        h = inp
        for f in (16, 32):
            h = L.MaxPooling2D(2)(L.Activation("relu")(L.BatchNormalization()(L.Conv2D(f, 3, padding="same")(h))))
        h = L.Dense(64, activation="relu")(L.Flatten()(h))
    elif kind == "residual":
        h = L.Conv2D(16, 3, padding="same", activation="relu")(inp)
        for _ in range(2):
            r = L.Conv2D(16, 3, padding="same")(L.Conv2D(16, 3, padding="same", activation="relu")(h))
            h = L.ReLU()(L.Add()([h, r]))
        h = L.Dense(32, activation="relu")(L.Flatten()(L.MaxPooling2D(2)(h)))
    elif kind == "softmax-layer":
        h = L.Flatten()(_conv_stack(L, inp, L.MaxPooling2D))
        h = L.Dense(64, activation="relu")(h)
        head_softmax = "layer"
    elif kind == "dropout-gap":
        h = L.Dropout(0.2)(_conv_stack(L, inp, L.MaxPooling2D, filters=(16, 32, 32)))
        h = L.Dropout(0.3)(L.Dense(64, activation="relu")(L.GlobalAveragePooling2D()(h)))
    elif kind == "mlp":
        h = L.Dense(32, activation="relu")(L.Dense(128, activation="relu")(L.Flatten()(inp)))
    elif kind == "input-1":
        h = L.Flatten()(_conv_stack(L, inp, L.MaxPooling2D, filters=(8, 16)))
        h = L.Dense(32, activation="relu")(h)
    else:
        raise ValueError(kind)
    if head_softmax == "layer":
        out = L.Softmax()(L.Dense(10)(h))
    else:
        out = L.Dense(10, activation="softmax")(h)
    return tf.keras.Model(inp, out)


ZOO = (
    "cnn-seed1",
    "cnn-seed2",
    "avgpool",
    "strided",
    "valid",
    "batchnorm",
    "residual",
    "softmax-layer",
    "dropout-gap",
    "mlp",
    "input-1",
)


def train(kind: str, seed: int, folder: Path, samples: int) -> float:
    """Train one zoo model in a process of its own (Keras' default names start afresh there) and save it."""
    code = f"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, {str(ROOT / "bench")!r})
import numpy as np, tensorflow as tf
from false_alarms import build, digits_28x28
tf.keras.utils.set_random_seed({seed})
x, y = digits_28x28({seed})
model = build({kind!r})
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x[:1200], y[:1200], epochs=4, batch_size=64, verbose=0)
accuracy = model.evaluate(x[1200:], y[1200:], verbose=0)[1]
model.save({str(folder / "model.h5")!r})
np.savez({str(folder / "digits.npz")!r}, x=x[1200:1200 + {samples}])
print(f"{{accuracy:.3f}}")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    if run.returncode != 0:
        raise RuntimeError(f"training {kind} failed:\n{run.stderr[-2000:]}")
    return float(run.stdout.strip().splitlines()[-1])


def _env(**extra) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0", **extra)
    env.pop("PYTEST_ADDOPTS", None)
    return env


def run_suite(folder: Path, *extra: str, env: dict | None = None) -> dict:
    """The packaged suite on folder/model.h5 as a user runs it; outcome per test id and the red ones' first line."""
    junit = folder / "junit.xml"
    started = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--lrp-model=model.h5",
            "--lrp-inputs=digits.npz",
            "-q",
            "-p",
            "no:cacheprovider",
            "--lrp-no-summary",
            f"--junitxml={junit}",
            *extra,
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        env=env or _env(),
    )
    seconds = time.perf_counter() - started
    outcomes = {}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = case.get("name")
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome, message = ("failed" if child.tag == "failure" else "error"), (child.get("message") or "")
                    if "XPASS(strict)" in message:
                        outcome = "xpassed-strict"
                elif child.tag == "skipped":
                    kind = child.get("type") or ""
                    outcome, message = ("xfailed" if "xfail" in kind else "skipped"), (child.get("message") or "")
            outcomes[name] = (outcome, message.strip().splitlines()[0][:300] if message.strip() else "")
    last = (run.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {
        "exit": run.returncode,
        "seconds": round(seconds, 1),
        "summary": last,
        "tests": outcomes,
        "stderr_tail": run.stderr[-1500:] if run.returncode not in (0, 1) else "",
    }


RED = ("failed", "error", "xpassed-strict")


def zoo(kinds, samples: int, keep: Path | None) -> dict:
    base = keep or Path(tempfile.mkdtemp(prefix="lrp-zoo-"))
    results = {}
    for kind in kinds:
        folder = base / kind
        folder.mkdir(parents=True, exist_ok=True)
        accuracy = train(kind, 1000 + ZOO.index(kind), folder, samples)
        run = run_suite(folder)
        red = {name: value for name, value in run["tests"].items() if value[0] in RED}
        counts = {}
        for outcome, _ in run["tests"].values():
            counts[outcome] = counts.get(outcome, 0) + 1
        results[kind] = {
            "accuracy": accuracy,
            "seconds": run["seconds"],
            "summary": run["summary"],
            "counts": counts,
            "red": {name: f"{o}: {m}" for name, (o, m) in sorted(red.items())},
        }
        print(f"{kind:14s} acc {accuracy:.2f}  {len(red):3d} red  {run['summary']}", flush=True)
        for name, (outcome, message) in sorted(red.items())[:12]:
            print(f"    {outcome:8s} {name}: {message[:200]}", flush=True)
        if run["stderr_tail"]:
            print("    stderr: " + run["stderr_tail"][-600:], flush=True)
    return results


# Each fault changes one thing in innvestigate 2.1.2's rules for the whole run (FAULT_PLUGIN below).
FAULTS = {
    "alpha 2 -> 2.05": "alpha_beta_alpha",
    "epsilon 1e-7 -> 1e-3 (z/epsilon rules)": "epsilon_value",
    "bias dropped from the z rule": "z_no_bias",
    "kernel sign flipped in one layer's rule": "kernel_sign",
    "kernel transposed in one layer's rule": "kernel_transposed",
    "w-square rule swapped for flat on one layer": "rule_swapped",
    "stabilizer sign flipped (epsilon rules)": "stabilizer_sign",
}

FAULT_PLUGIN_SOURCE = '''
"""Injects one fault (LRP_FAULT) into innvestigate 2.1.2's LRP rules, for bench/false_alarms.py --faults."""
import os

FAULT = os.environ.get("LRP_FAULT", "")


def pytest_configure(config):
    from pytest_lrp.base.tf_runtime import innvestigate

    inn = innvestigate()
    import innvestigate.analyzer.relevance_based.relevance_rule as rr
    from innvestigate.backend import graph as igraph

    if FAULT == "alpha_beta_alpha":
        original = rr.AlphaBetaRule.__init__

        def init(self, layer, *args, alpha=None, beta=None, **kwargs):
            original(self, layer, *args, alpha=alpha, beta=beta, **kwargs)
            self._alpha = self._alpha * 1.025
        rr.AlphaBetaRule.__init__ = init
    elif FAULT == "epsilon_value":
        original = rr.EpsilonRule.__init__

        def init(self, layer, *args, epsilon=1e-7, **kwargs):
            original(self, layer, *args, epsilon=epsilon * 1e4 if epsilon < 1e-3 else epsilon, **kwargs)
        rr.EpsilonRule.__init__ = init
    elif FAULT == "z_no_bias":
        original = rr.ZRule.__init__

        def init(self, layer, *args, bias=True, **kwargs):
            original(self, layer, *args, bias=False, **kwargs)
        rr.ZRule.__init__ = init
    elif FAULT in ("kernel_sign", "kernel_transposed"):
        # in the z rule's own copy of one layer (LRP_FAULT_LAYER, the first convolution): the forward pass,
        # and every other rule, keep the right kernel
        original = rr.ZRule.__init__
        target = os.environ.get("LRP_FAULT_LAYER", "conv2d")

        def init(self, layer, *args, **kwargs):
            original(self, layer, *args, **kwargs)
            if layer.name != target:
                return
            weights = self._layer_wo_act.get_weights()
            kernel = weights[0]
            kernel = -kernel if FAULT == "kernel_sign" else (kernel.transpose(1, 0, 2, 3) if kernel.ndim == 4 else kernel[::-1])
            self._layer_wo_act.set_weights([kernel] + weights[1:])
        rr.ZRule.__init__ = init
    elif FAULT == "rule_swapped":
        rr.WSquareRule.__bases__  # flat instead of w-square on the layers w-square maps
        original = rr.WSquareRule.__init__

        def init(self, layer, *args, **kwargs):
            rr.FlatRule.__init__(self, layer, *args, **kwargs)
        if not getattr(rr.WSquareRule, "_lrp_swapped", False):
            rr.WSquareRule._lrp_swapped = True
            counter = {"n": 0}

            def once(self, layer, *args, **kwargs):
                counter["n"] += 1
                (init if counter["n"] == 1 else original)(self, layer, *args, **kwargs)
            rr.WSquareRule.__init__ = once
    elif FAULT == "stabilizer_sign":
        original = rr.EpsilonRule.__init__

        def init(self, layer, *args, epsilon=1e-7, **kwargs):
            original(self, layer, *args, epsilon=epsilon, **kwargs)
            self._epsilon = -self._epsilon
        rr.EpsilonRule.__init__ = init
'''


def faults(kind: str, samples: int, keep: Path | None) -> dict:
    base = keep or Path(tempfile.mkdtemp(prefix="lrp-faults-"))
    folder = base / kind
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "model.h5").exists():
        train(kind, 1000 + ZOO.index(kind), folder, samples)
    (folder / f"{FAULT_PLUGIN}.py").write_text(FAULT_PLUGIN_SOURCE)
    clean = run_suite(folder)
    results = {"model": kind, "clean": clean["summary"], "faults": {}}
    for label, fault in FAULTS.items():
        run = run_suite(folder, "-p", FAULT_PLUGIN, env=_env(LRP_FAULT=fault, PYTHONPATH=str(folder)))
        caught = sorted(
            name for name, (o, _) in run["tests"].items() if o in RED and clean["tests"].get(name, ("",))[0] not in RED
        )
        results["faults"][label] = {"caught_by": caught, "summary": run["summary"]}
        print(f"{label:48s} caught by {len(caught):3d} tests  {run['summary']}", flush=True)
        for name in caught[:8]:
            print(f"    {name}: {run['tests'][name][1][:160]}", flush=True)
    return results


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "python": platform.python_version(),
        "platform": platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(ZOO), choices=ZOO)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--faults", action="store_true", help="the fault-injection matrix instead of the zoo")
    parser.add_argument("--fault-model", default="cnn-seed1", choices=ZOO)
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--update", action="store_true", help=f"also write {LAST_RUN.name}")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "false_alarms.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = machine()
    if args.faults:
        results["faults"] = faults(args.fault_model, args.samples, args.keep)
    else:
        results["zoo"] = {"samples": args.samples, "models": zoo(args.models, args.samples, args.keep)}
    out.write_text(json.dumps(results, indent=1) + "\n")
    if args.update:
        last = json.loads(LAST_RUN.read_text()) if LAST_RUN.exists() else {}
        last.update(results)
        LAST_RUN.write_text(json.dumps(last, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
