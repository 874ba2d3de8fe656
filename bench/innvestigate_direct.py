"""innvestigate run the usual way, for bench/deep.py: what pytest-lrp's speed-up is compared against.

Per rule, in a TensorFlow graph of its own: the model file loaded there, softmax stripped,
create_analyzer, analyze; Keras' normal path (no speed-up switch, learning phase placeholder).
The inputs are the ones pytest-lrp analyzed (FOLDER/lrp_<rule>.npz); heatmaps go to
FOLDER/direct_<rule>.npz and seconds (build = create_analyzer_model, first analyze; wall and CPU of the whole rule) to FOLDER/direct.json.
Uses only numpy, TensorFlow and innvestigate.

    python bench/innvestigate_direct.py MODEL.h5 FOLDER '{"z": ["lrp.z", {}], ...}'
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.simplefilter("ignore")


def main() -> None:
    import innvestigate
    import tensorflow as tf

    model_path, folder, rules = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    times = {}
    for name, (analyzer, params) in rules.items():
        ours = folder / f"lrp_{name}.npz"
        if not ours.exists():
            continue
        x = np.load(ours)["x"]
        started, cpu = time.perf_counter(), time.process_time()
        row = analyze(
            tf, innvestigate, model_path, analyzer, params, x, folder / f"direct_{name}.npz", inference_phase=False
        )
        if "error" in row:
            # integrated_gradients crashes the usual way on any model with BatchNormalization (innvestigate 2.1.2,
            # Keras 2.14): the closest run that works fixes the graph's learning phase to inference.
            started, cpu = time.perf_counter(), time.process_time()
            row = {
                "usual_way_error": row["error"],
                **analyze(
                    tf,
                    innvestigate,
                    model_path,
                    analyzer,
                    params,
                    x,
                    folder / f"direct_{name}.npz",
                    inference_phase=True,
                ),
            }
        row.update(direct_s=round(time.perf_counter() - started, 2), direct_cpu_s=round(time.process_time() - cpu, 2))
        times[name] = row
        print(name, row, flush=True)
        (folder / "direct.json").write_text(json.dumps(times, indent=1) + "\n")


def analyze(tf, innvestigate, model_path, analyzer, params, x, out: Path, inference_phase: bool) -> dict:
    row = {"learning_phase_fixed": inference_phase}
    with tf.Graph().as_default():
        if inference_phase:
            tf.keras.backend.set_learning_phase(0)
        model = innvestigate.model_wo_softmax(tf.keras.models.load_model(model_path, compile=False))
        try:
            explainer = innvestigate.create_analyzer(analyzer, model, disable_model_checks=True, **params)
            t0 = time.perf_counter()
            if hasattr(explainer, "create_analyzer_model"):
                explainer.create_analyzer_model()
            t1 = time.perf_counter()
            heatmaps = explainer.analyze(x)
            row.update(build_s=round(t1 - t0, 2), analyze_s=round(time.perf_counter() - t1, 2))
            np.savez(out, heatmaps=heatmaps)
        except Exception as exc:  # recorded, as innvestigate's own outcome
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return row


if __name__ == "__main__":
    main()
