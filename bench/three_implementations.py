"""One rule, three implementations: innvestigate, zennit and captum on the same CNN, weights copied.

    python bench/three_implementations.py            # prints the table
    python bench/three_implementations.py --update   # also writes bench/last_run_three_implementations.json

The network is the tests' small CNN (tests/conftest.py conv_nets: 8x8x1 -> conv 3x3 same, ReLU -> max pool ->
conv 3x3 valid, ReLU -> flatten -> dense 3), with biases and without, in Keras and as its PyTorch twin
(tests/test_three_implementations.py copies the weights the same way). For the epsilon, z+ and alpha-beta rules
each library's heatmap is compared with the numpy reference of its own formula (float32 against float64) and
with innvestigate's heatmap; and each heatmap's sum with the explained output. Needs TensorFlow with innvestigate
and torch with zennit and captum in one environment (Python 3.12: TensorFlow 2.16+ with tf_keras).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import numpy as np
from common import RESULTS, ROOT

sys.path.insert(0, str(ROOT / "tests"))
LAST_RUN = ROOT / "bench" / "last_run_three_implementations.json"
SAMPLES = 16
RULES = [  # (rule, {library: (analyzer, params)})
    (
        "epsilon (1e-6)",
        {
            "innvestigate": ("lrp.epsilon", {"epsilon": 1e-6}),
            "zennit": ("zennit.rule.epsilon", {"epsilon": 1e-6}),
            "captum": ("captum.lrp", {"rule": "epsilon", "epsilon": 1e-6}),
        },
    ),
    (
        "z+",
        {
            "innvestigate": ("lrp.z_plus", {}),
            "zennit": ("zennit.rule.zplus", {}),
            "captum": ("captum.lrp", {"rule": "alpha1_beta0"}),
        },
    ),
    (
        "alpha2-beta1",
        {"innvestigate": ("lrp.alpha_2_beta_1", {}), "zennit": ("zennit.rule.alpha_beta", {"alpha": 2, "beta": 1})},
    ),
]


def torch_twin(keras_weights: list, bias: bool):
    import torch
    from test_three_implementations import torch_weights

    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1, bias=bias),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 4, 3, bias=bias),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 3, bias=bias),
    )
    net.load_state_dict({key: torch.as_tensor(value) for key, value in torch_weights(keras_weights, bias).items()})
    return net.eval()


def torch_heatmap(net, analyzer: str, params: dict, x_nchw: np.ndarray, neurons: np.ndarray) -> np.ndarray:
    from pytest_lrp.config.rulefile import Rule
    from pytest_lrp.pytorch.analyzers import runner

    rule = Rule(id="bench", analyzer=analyzer, params=params, checks=("conservation",))
    return runner(rule, net, "cpu")(x_nchw, lambda outputs: neurons, False).heatmaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--update", action="store_true")
    parser.parse_args()
    import zennit  # noqa: F401
    from helpers.conv_cnn import conv_cnn
    from reference_accounting import innvestigate_run

    from pytest_lrp.base.tf_runtime import innvestigate, tensorflow
    from pytest_lrp.pytorch.graph import channels_last, reference_model
    from pytest_lrp.reference import ReferenceModel, explain

    tf, inn = tensorflow(), innvestigate()
    tf.compat.v1.disable_eager_execution()
    x = np.random.default_rng(8).uniform(0, 1, (SAMPLES, 8, 8, 1)).astype(np.float32)
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    rows = []
    for bias in (True, False):
        keras = conv_cnn(tf, bias)
        config, weights = keras.get_config(), keras.get_weights()
        from_keras = ReferenceModel.from_keras(config, {layer.name: layer.get_weights() for layer in keras.layers})
        net = torch_twin(weights, bias)
        from_torch = reference_model(net, (1, 8, 8))
        outputs = from_keras.predict(x)
        neurons = outputs.argmax(axis=1)
        target = outputs[np.arange(SAMPLES), neurons]
        for rule, libraries in RULES:
            heatmaps, references = {}, {}
            for library, (analyzer, params) in libraries.items():
                if library == "innvestigate":
                    heatmaps[library] = np.asarray(innvestigate_run(tf, inn, config, weights, x, analyzer, params)[0])
                    references[library] = explain(from_keras, x, analyzer, params, "index", neurons).heatmap
                else:
                    heat = torch_heatmap(net, analyzer, params, x_nchw, neurons)
                    heatmaps[library] = channels_last(heat)
                    references[library] = explain(from_torch, x, analyzer, params, "index", neurons).heatmap
            for library in libraries:
                heat, ref = heatmaps[library], references[library]
                scale = np.abs(ref).reshape(SAMPLES, -1).max(axis=1)
                sums = heat.reshape(SAMPLES, -1).sum(axis=1)
                rows.append(
                    {
                        "network": "with biases" if bias else "without biases",
                        "rule": rule,
                        "library": library,
                        "analyzer": libraries[library][0],
                        "vs_reference": float(
                            np.max(np.abs(heat - ref).reshape(SAMPLES, -1).max(axis=1) / np.maximum(scale, 1e-30))
                        ),
                        "vs_innvestigate": float(
                            np.max(
                                np.abs(heat - heatmaps["innvestigate"]).reshape(SAMPLES, -1).max(axis=1)
                                / np.maximum(np.abs(heatmaps["innvestigate"]).reshape(SAMPLES, -1).max(axis=1), 1e-30)
                            )
                        ),
                        "conservation": float(np.median(np.abs(sums - target) / np.abs(target))),
                    }
                )
    for row in rows:
        print(
            f"{row['network']:15} {row['rule']:14} {row['library']:12} vs reference {row['vs_reference']:.2e}  "
            f"vs innvestigate {row['vs_innvestigate']:.2e}  |sum(R) - f(x)| / |f(x)| {row['conservation']:.2e}"
        )
    from importlib.metadata import version

    versions = {name: version(name) for name in ("torch", "zennit", "captum", "tensorflow", "innvestigate")}
    document = {
        "rows": rows,
        "samples": SAMPLES,
        "machine": {"python": platform.python_version(), **versions},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "three_implementations.json").write_text(json.dumps(document, indent=2))
    if parser.parse_args().update:
        LAST_RUN.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
