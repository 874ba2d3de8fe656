"""Where each rule of the default suite loses relevance on the example CNN, and why (issue 12).

    python bench/reference_accounting.py                  # all rules of rules.yaml, 16 digits
    python bench/reference_accounting.py --rules z alpha2-beta1 --samples 4
    python bench/reference_accounting.py --vgg16           # timing only: VGG16, one sample per rule (~10 GB)

For every rule: innvestigate 2.1.2 run directly (fresh graph, reverse_keep_tensors) and the
numpy reference (pytest_lrp.reference) on the same inputs. Printed as Markdown:
1. per rule: the conservation error max |sum(R) - t| / |t| (innvestigate and reference, next to
   the original bug report's numbers where it measured the same rule), the heatmap difference,
   and the mean over samples of each mechanism's change as a share of t, with `unexplained` =
   innvestigate's total change minus the sum of the reference's mechanisms;
2. per rule and layer: the layers whose mechanisms move more than 0.1% of t;
3. times: the reference vs innvestigate (build + analyze), per rule, measured in this process
   (--vgg16: CPU seconds, innvestigate with pytest-lrp's speed-up unless --without-speedup).
Nothing is asserted; the README quotes the output.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pytest_lrp.reference import MECHANISMS, ReferenceModel, explain  # noqa: E402

# The original report (innvestigate 1.x, MNIST CNN, 16 test digits): max relative conservation error.
BUG_REPORT = {
    "z-no-bias": ("lrp.z_IB", 2.5e-7),
    "epsilon-1": ("lrp.epsilon_IB eps=1", 0.80),
    "alpha2-beta1-ib": ("lrp.alpha_2_beta_1_IB", 0.166),
    "alpha2-beta1": ("lrp.alpha_2_beta_1", 0.888),
    "deep-taylor-bounded": ("deep_taylor.bounded", 0.0177),
}
SHOWN_SHARE = 1e-3


def load_tf():
    import warnings

    warnings.simplefilter("ignore")
    import innvestigate
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf, innvestigate


def innvestigate_run(tf, inn, config, weights, x, analyzer, params, speedup=False):
    """(heatmap, per-layer (name -> relevance total at its output), wall seconds, CPU seconds) with innvestigate
    run directly (fresh graph, reverse_keep_tensors); with ``speedup`` inside pytest-lrp's engine/speedup.py
    switches, as the plugin builds it."""
    from contextlib import nullcontext

    started, cpu = time.perf_counter(), time.process_time()
    with tf.Graph().as_default():
        scope = nullcontext()
        if speedup:
            from pytest_lrp.engine import speedup as fast

            fast.prepare_graph(tf)
            config = getattr(fast, "rebuild_config", lambda c: c)(config)
            scope = fast.analyzer_build(tf, inn)
        with scope:
            model = (tf.keras.Model if "input_layers" in config else tf.keras.Sequential).from_config(config)
            model.set_weights(weights)
            # as the plugin does (engine/upstream_fixes.py): without it, integrated gradients' own Input is a second
            # 'input_1' in the fresh graph and Keras refuses the model (why innvestigate never ran it here before)
            from pytest_lrp.engine.upstream_fixes import reserve_layer_names

            reserve_layer_names(tf, model)
            keep = analyzer.startswith(("lrp", "deep_taylor"))
            options = {"reverse_keep_tensors": True} if keep else {}
            analyzer_object = inn.create_analyzer(analyzer, model, **options, **params)
            heatmap = analyzer_object.analyze(x)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        totals = {}
        if keep:
            kept = dict(analyzer_object._reversed_tensors)
            graph = inn.backend.graph.get_model_execution_graph(model)
            for nid in sorted(k for k in graph if k is not None):
                for index, producer in enumerate(graph[nid]["Xs_nids"]):
                    if (nid, index) in kept and producer is not None:
                        name = graph[producer]["layer"].name
                        totals.setdefault(name, kept[(nid, index)].reshape(len(x), -1).sum(axis=1))
    del analyzer_object, model
    gc.collect()
    return heatmap, totals, seconds, cpu


def target(rule, outputs, reference_outputs):
    chosen = outputs.max(axis=1)
    kind = rule.get("target", "output")
    if kind == "positive_output":
        return np.maximum(chosen, 0)
    if kind == "output_minus_reference":
        return chosen - reference_outputs[np.arange(len(chosen)), outputs.argmax(axis=1)]
    return chosen


def fmt(value):
    return "0" if value == 0 else f"{value:.3g}"


def account_rule(tf, inn, rule, config, weights, x, reference, outputs):
    analyzer, params = rule["analyzer"], dict(rule.get("params") or {})
    heatmap, _, t_inn, _ = innvestigate_run(tf, inn, config, weights, x, analyzer, params)
    started = time.perf_counter()
    result = explain(reference, x, analyzer, params)
    t_ref = time.perf_counter() - started
    ref_inputs = np.asarray(params.get("reference_inputs", 0.0)) * np.ones_like(x)
    t = target(rule, outputs, reference.predict(ref_inputs))
    scale = np.where(np.abs(t) > 0, np.abs(t), 1.0)
    err_inn = np.abs(heatmap.reshape(len(x), -1).sum(axis=1) - t) / scale
    err_ref = np.abs(result.heatmap.reshape(len(x), -1).sum(axis=1) - t) / scale
    diff = np.abs(result.heatmap - heatmap).max()
    row = {
        "rule": rule["id"],
        "analyzer": analyzer,
        "err_inn": err_inn.max(),
        "err_ref": err_ref.max(),
        "diff": diff,
        "rel": diff / max(np.abs(result.heatmap).max(), 1e-30),
        "t_inn": t_inn,
        "t_ref": t_ref,
        "mechanisms": {},
        "layers": [],
    }
    if result.layers and result.layers[0].mechanisms:
        total = {m: sum(a.mechanisms[m] for a in result.layers) for m in MECHANISMS}
        change_inn = heatmap.reshape(len(x), -1).sum(axis=1) - result.output_relevance
        total["unexplained"] = change_inn - sum(total[m] for m in MECHANISMS)
        row["mechanisms"] = {m: float(np.mean(v / scale)) for m, v in total.items()}
        for account in result.layers:
            shares = {m: float(np.mean(account.mechanisms[m] / scale)) for m in MECHANISMS}
            if any(abs(s) > SHOWN_SHARE for s in shares.values()):
                row["layers"].append((account.name, account.rule, shares))
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", nargs="*", help="rule ids of rules.yaml (default: all)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--vgg16", action="store_true", help="time VGG16 (weights=None, 1 sample) instead")
    parser.add_argument(
        "--without-speedup",
        action="store_true",
        help="--vgg16: innvestigate run the usual way, not with pytest-lrp's speed-up",
    )
    parser.add_argument("--json", help="--vgg16: also write the rows to this file")
    args = parser.parse_args(argv)
    tf, inn = load_tf()
    suite = yaml.safe_load((ROOT / "rules.yaml").read_text())
    rules = [r for r in suite["rules"] if not args.rules or r["id"] in args.rules]
    if args.vgg16:
        return time_vgg16(tf, inn, rules, not args.without_speedup, args.json)
    keras_model = inn.model_wo_softmax(tf.keras.models.load_model(ROOT / "examples" / "cnn.hdf5", compile=False))
    config, weights = keras_model.get_config(), keras_model.get_weights()
    reference = ReferenceModel.from_keras(config, {layer.name: layer.get_weights() for layer in keras_model.layers})
    x = np.load(ROOT / "examples" / "digits.npz")["x"][: args.samples].astype(np.float32)
    outputs = keras_model.predict(x, verbose=0).astype(np.float64)
    print(
        f"example CNN (examples/cnn.hdf5), {len(x)} digits; reference forward vs Keras: "
        f"max difference {np.abs(reference.predict(x) - outputs).max():.2g}\n"
    )
    rows = [account_rule(tf, inn, rule, config, weights, x, reference, outputs) for rule in rules]
    print_tables(rows)


def print_tables(rows):
    print(
        "| rule | max error innvestigate | reference | bug report (1.x) | heatmap max diff (rel) | "
        + " | ".join(MECHANISMS)
        + " | unexplained |"
    )
    print("|---" * (6 + len(MECHANISMS)) + "|")
    for row in rows:
        report = BUG_REPORT.get(row["rule"])
        report_text = f"{report[1]:.3g} ({report[0]})" if report else ""
        mech = row["mechanisms"]
        cells = [fmt(mech.get(m, 0.0)) if mech else "" for m in (*MECHANISMS, "unexplained")]
        print(
            f"| {row['rule']} | {row['err_inn']:.3g} | {row['err_ref']:.3g} | {report_text} | "
            f"{row['diff']:.2g} ({row['rel']:.1g}) | " + " | ".join(cells) + " |"
        )
    print(
        "\nMechanisms: mean over the digits of the change each causes, as a share of the explained output t "
        "(negative: lost). unexplained = innvestigate's sum(R) - t minus the reference's mechanisms.\n"
    )
    print("| rule | layer | rule at the layer | " + " | ".join(MECHANISMS) + " |")
    print("|---" * (3 + len(MECHANISMS)) + "|")
    for row in rows:
        for name, rule, shares in row["layers"]:
            print(f"| {row['rule']} | {name} | {rule} | " + " | ".join(fmt(shares[m]) for m in MECHANISMS) + " |")
    print("\n| rule | reference (s) | innvestigate build + analyze (s) | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['rule']} | {row['t_ref']:.2f} | {row['t_inn']:.2f} | {row['t_ref'] / row['t_inn']:.2f} |")
    t_ref, t_inn = sum(r["t_ref"] for r in rows), sum(r["t_inn"] for r in rows)
    print(f"| all | {t_ref:.1f} | {t_inn:.1f} | {t_ref / t_inn:.2f} |")


def time_vgg16(tf, inn, rules, speedup, out_json=None):
    """One sample per rule, the reference as the plugin runs it (engine/reference_run.py: the forward check
    `predict`, then `explain` for innvestigate's neuron) and innvestigate (build + analyze), alternating in
    one process. CPU seconds of the process (numpy's and TensorFlow's threads) are the measure; wall seconds
    are shown too. The reference's peak is numpy's traced allocation peak during its run."""
    import json
    import resource
    import tracemalloc

    keras_model = tf.keras.applications.VGG16(weights=None, classifier_activation=None)
    config, weights = keras_model.get_config(), keras_model.get_weights()
    reference = ReferenceModel.from_keras(config, {layer.name: layer.get_weights() for layer in keras_model.layers})
    x = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
    outputs = keras_model.predict(x, verbose=0)
    del keras_model
    gc.collect()
    mode = "with pytest-lrp's speed-up (engine/speedup.py)" if speedup else "run the usual way"
    print(
        f"VGG16 (weights=None), 1 sample; innvestigate {mode}; reference forward vs Keras: max difference "
        f"{np.abs(reference.predict(x) - outputs).max():.2g} on outputs up to {np.abs(outputs).max():.3g}\n"
    )
    print(
        "| rule | reference CPU s | innvestigate CPU s | ratio | reference wall s | innvestigate wall s | "
        "reference peak GB | heatmap max diff (rel) | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    # The plugin runs the reference's forward pass once for all rules of a model and inputs (the first rule
    # pays for it): timed on its own row, so that each rule's row is what that rule adds.
    reference._last_forward = None
    started, cpu = time.perf_counter(), time.process_time()
    reference.predict(x)
    shared = {
        "rule": "(forward pass, shared)",
        "reference_cpu_s": round(time.process_time() - cpu, 2),
        "reference_wall_s": round(time.perf_counter() - started, 2),
    }
    print(f"| {shared['rule']} | {shared['reference_cpu_s']:.1f} | | | {shared['reference_wall_s']:.1f} | | | | |")
    rows = []
    # integrated gradients last: innvestigate needs 9 GB for it on VGG16 (README, Performance)
    for rule in sorted(rules, key=lambda r: r["analyzer"] == "integrated_gradients"):
        analyzer, params = rule["analyzer"], dict(rule.get("params") or {})
        neurons = outputs.argmax(axis=1)
        tracemalloc.start()
        started, cpu = time.perf_counter(), time.process_time()
        reference.predict(x)
        result = explain(reference, x.astype(np.float64), analyzer, params, "index", neurons, keep_maps=False)
        t_ref, c_ref = time.perf_counter() - started, time.process_time() - cpu
        peak = tracemalloc.get_traced_memory()[1] / 1e9
        tracemalloc.stop()
        heatmap, _, t_inn, c_inn = innvestigate_run(tf, inn, config, weights, x, analyzer, params, speedup)
        diff = np.abs(result.heatmap - heatmap).max()
        rel = diff / max(np.abs(result.heatmap).max(), 1e-30)
        load = os.getloadavg()[0]
        rows.append(
            {
                "rule": rule["id"],
                "reference_cpu_s": round(c_ref, 2),
                "innvestigate_cpu_s": round(c_inn, 2),
                "reference_wall_s": round(t_ref, 2),
                "innvestigate_wall_s": round(t_inn, 2),
                "reference_peak_gb": round(peak, 2),
                "max_diff": float(diff),
                "rel_diff": float(rel),
                "load": load,
            }
        )
        print(
            f"| {rule['id']} | {c_ref:.1f} | {c_inn:.1f} | {c_ref / c_inn:.2f} | {t_ref:.1f} | {t_inn:.1f} | "
            f"{peak:.2f} | {diff:.2g} ({rel:.1g}) | {load:.1f} |",
            flush=True,
        )
        del result, heatmap
        gc.collect()
    c_ref, c_inn = (
        sum(r["reference_cpu_s"] for r in rows) + shared["reference_cpu_s"],
        sum(r["innvestigate_cpu_s"] for r in rows),
    )
    t_ref, t_inn = (
        sum(r["reference_wall_s"] for r in rows) + shared["reference_wall_s"],
        sum(r["innvestigate_wall_s"] for r in rows),
    )
    print(f"| all | {c_ref:.0f} | {c_inn:.0f} | {c_ref / c_inn:.2f} | {t_ref:.0f} | {t_inn:.0f} | | | |")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"\nprocess peak (ru_maxrss) {maxrss:.1f} GB")
    if out_json:
        Path(out_json).write_text(
            json.dumps({"speedup": speedup, "shared_forward": shared, "rows": rows, "maxrss_gb": maxrss}, indent=1)
            + "\n"
        )


if __name__ == "__main__":
    main()
