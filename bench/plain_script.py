"""The baseline pytest-lrp is compared against: the bug report's way of running a suite.

innvestigate#116's script switches TensorFlow to graph mode globally
(``tf.compat.v1.disable_eager_execution()``), loads the model once, and then
creates and runs one analyzer per rule in that same graph, checking that each
heatmap sums to the explained output. This script does exactly that for the
rules of a pytest-lrp rule file, so both run the same analyzers on the same
inputs. It uses only yaml, numpy, TensorFlow and innvestigate (not pytest-lrp).

    python bench/plain_script.py [--rules rules.yaml] [--model M.h5] [--inputs X.npz] [--samples N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.simplefilter("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", default="rules.yaml")
    parser.add_argument("--model", help="default: the rule file's first defaults.models entry")
    parser.add_argument("--inputs", help="default: the rule file's defaults.inputs (random inputs if none)")
    parser.add_argument("--samples", type=int, help="default: the rule file's defaults.samples")
    parser.add_argument("--json", help="write per-rule seconds and errors here")
    args = parser.parse_args()

    started = time.perf_counter()
    rules_path = Path(args.rules)
    suite = yaml.safe_load(rules_path.read_text())
    defaults = suite.get("defaults", {})
    model_path = Path(args.model) if args.model else rules_path.parent / defaults["models"][0]
    samples = args.samples or defaults.get("samples") or 8

    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    import innvestigate

    model = tf.keras.models.load_model(str(model_path), compile=False)
    model = innvestigate.model_wo_softmax(model)
    inputs = args.inputs or (str(rules_path.parent / defaults["inputs"]) if defaults.get("inputs") else None)
    if inputs:
        x = np.load(inputs)
        x = (x["x"] if "x" in x.files else x[x.files[0]]) if hasattr(x, "files") else x
        x = x[:samples].astype(np.float32)
    else:
        shape = tuple(d or 1 for d in model.input_shape[1:])
        x = np.random.default_rng(defaults.get("seed", 0)).random((samples, *shape), dtype=np.float32)
    outputs = model.predict(x)
    selected = outputs.max(axis=1)
    imported = time.perf_counter()

    per_rule = []
    for rule in suite["rules"]:
        t0 = time.perf_counter()
        analyzer = innvestigate.create_analyzer(rule["analyzer"], model, **rule.get("params", {}))
        heatmaps = analyzer.analyze(x)
        sums = heatmaps.reshape(len(x), -1).sum(axis=1)
        error = float(np.max(np.abs(sums - selected) / np.abs(selected)))
        seconds = time.perf_counter() - t0
        per_rule.append({"id": rule["id"], "seconds": seconds, "max_relative_error": error})
        print(f"{rule['id']:24s} {seconds:6.2f} s  max |sum(R) - f(x)| / |f(x)| = {error:.3g}", flush=True)
    total = time.perf_counter() - started
    print(f"{len(per_rule)} rules in {total:.1f} s (set-up {imported - started:.1f} s)")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"setup_seconds": imported - started, "total_seconds": total, "rules": per_rule}, indent=1)
        )


if __name__ == "__main__":
    main()
