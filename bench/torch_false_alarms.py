"""False alarms of the packaged PyTorch suite on models trained the way users train them, and torchvision's.

    python bench/torch_false_alarms.py                  # the zoo: train, save, run the packaged suite, count red
    python bench/torch_false_alarms.py --torchvision    # torchvision's networks (weights=None), 64x64 inputs
    python bench/torch_false_alarms.py --keep DIR --update

The zoo trains small networks with Adam on scikit-learn's digits (16x16, one channel, each its own seed):
two seeds of a plain CNN, BatchNorm, strided and average-pooling convolutions, a residual block written
with `+`, a final Softmax, an MLP. Each is written as a user writes one: a models.py whose factory loads a
state dict (torch.load(weights_only=True)), run as `pytest --lrp-model=models.py:NAME --lrp-inputs=digits.npy`
in an empty folder. Red (failed, error, XPASS(strict)) is a false alarm: none of these models has a fault.
torchvision's networks get random weights and BatchNorm statistics; each rule must run or be refused as a
skipped test, never error. Results go to bench/results/torch_false_alarms.json and, with --update, to
bench/last_run_torch_false_alarms.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import zlib
from pathlib import Path

from common import RESULTS, ROOT, junit, pytest_cmd, run

LAST_RUN = ROOT / "bench" / "last_run_torch_false_alarms.json"
RED = ("failed", "error")

MODELS_PY = """
import torch
from torch import nn

HERE = __file__.rsplit("/", 1)[0]


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.bn(self.conv1(x)))) + x)


def build(kind):
    if kind.startswith("cnn"):
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                             nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 10))
    if kind == "batchnorm":
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(16, 10))
    if kind == "strided":
        return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                             nn.ReLU(), nn.Flatten(), nn.Dropout(0.3), nn.Linear(16 * 3 * 3, 10))
    if kind == "avgpool":
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 16, 3),
                             nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16 * 3 * 3, 10))
    if kind == "residual":
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), Block(8), nn.MaxPool2d(2), Block(8),
                             nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))
    if kind == "softmax":
        return nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 6 * 6, 32),
                             nn.ReLU(), nn.Linear(32, 10), nn.Softmax(dim=1))
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    raise ValueError(kind)


def load(kind):
    net = build(kind)
    net.load_state_dict(torch.load(f"{HERE}/{kind}.pt", weights_only=True))
    return net
"""
KINDS = ("cnn-seed0", "cnn-seed1", "batchnorm", "strided", "avgpool", "residual", "softmax", "mlp")
TORCHVISION = ("resnet18", "resnet50", "vgg16", "mobilenet_v3_small", "densenet121", "efficientnet_b0")
TORCHVISION_PY = """
import torch
import torchvision.models as models


def _net(name):
    torch.manual_seed(0)
    net = getattr(models, name)(weights=None, num_classes=10)
    with torch.no_grad():  # BatchNorm statistics as training leaves them, not the identity
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net


""" + "".join(f"def {n}():\n    return _net({n!r})\n\n\n" for n in TORCHVISION)


def digits_16x16():
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images, np.ones((2, 2))) / 16.0
    return images[:, None].astype("float32"), digits.target


def train(kind: str, folder: Path, samples: int) -> float:
    import numpy as np
    import torch

    sys.path.insert(0, str(folder))
    try:
        import importlib

        models = importlib.import_module("models")
        importlib.reload(models)
    finally:
        sys.path.remove(str(folder))
    seed = int(kind[-1]) if kind[-1].isdigit() else zlib.crc32(kind.encode()) % 1000  # hash() varies per process
    torch.manual_seed(seed)
    x, y = digits_16x16()
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = torch.tensor(x[order]), torch.tensor(y[order])
    train_x, train_y, test_x, test_y = x[:1400], y[:1400], x[1400:], y[1400:]
    net = models.build(kind)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = torch.nn.NLLLoss() if kind == "softmax" else torch.nn.CrossEntropyLoss()
    for _ in range(4):
        net.train()
        for start in range(0, len(train_x), 32):
            optimizer.zero_grad()
            out = net(train_x[start : start + 32])
            loss = loss_fn(torch.log(out + 1e-9) if kind == "softmax" else out, train_y[start : start + 32])
            loss.backward()
            optimizer.step()
    net.eval()
    torch.save(net.state_dict(), folder / f"{kind}.pt")
    np.save(folder / f"digits-{kind}.npy", test_x[:samples].numpy())
    with torch.no_grad():
        return float((net(test_x).argmax(1) == test_y).float().mean())


def run_suite(folder: Path, model: str, *extra: str) -> dict:
    report = folder / f"{model}.xml"
    measured = run(
        pytest_cmd(f"--lrp-model={model}", "--lrp-no-summary", f"--junitxml={report}", *extra), {**_env()}, cwd=folder
    )
    tests = {name: outcome for name, _, outcome in junit(report)} if report.exists() else {}
    counts: dict = {}
    for outcome in tests.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return {
        "seconds": measured["seconds"],
        "counts": counts,
        "red": sorted(name for name, outcome in tests.items() if outcome in RED),
        "exit": measured["exit"],
        "tail": measured["tail"] if measured["exit"] not in (0, 1) else [],
    }


def _env() -> dict:
    import os

    env = dict(os.environ, PYTHONHASHSEED="0")
    env.pop("PYTEST_ADDOPTS", None)
    return env


def zoo(samples: int, keep: Path | None) -> dict:
    folder = keep or Path(tempfile.mkdtemp(prefix="lrp-torch-zoo-"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models.py").write_text(
        MODELS_PY + "".join(f"\n\ndef {k.replace('-', '_')}():\n    return load({k!r})\n" for k in KINDS)
    )
    results = {}
    for kind in KINDS:
        accuracy = train(kind, folder, samples)
        found = run_suite(folder, f"models.py:{kind.replace('-', '_')}", f"--lrp-inputs=digits-{kind}.npy")
        found["accuracy"] = round(accuracy, 3)
        results[kind] = found
        print(
            f"{kind:12s} acc {accuracy:.2f}  {len(found['red']):3d} red  {found['counts']}  {found['red'][:4]}",
            flush=True,
        )
    return results


def torchvision_run(samples: int, keep: Path | None) -> dict:
    folder = keep or Path(tempfile.mkdtemp(prefix="lrp-torchvision-"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nets.py").write_text(TORCHVISION_PY)
    results = {}
    for name in TORCHVISION:
        found = run_suite(folder, f"nets.py:{name}", "--lrp-input-shape=3,64,64", f"--lrp-samples={samples}")
        results[name] = found
        print(f"{name:20s} {found['counts']}  red: {found['red'][:4]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torchvision", action="store_true", help="torchvision's networks instead of the zoo")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--keep", type=Path)
    parser.add_argument("--update", action="store_true", help=f"also write {LAST_RUN.name}")
    args = parser.parse_args()
    started = time.time()
    key = "torchvision" if args.torchvision else "zoo"
    samples = min(args.samples, 2) if args.torchvision else args.samples
    results = torchvision_run(samples, args.keep) if args.torchvision else zoo(samples, args.keep)
    import torch

    document = {
        key: results,
        "samples": samples,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": __import__("os").cpu_count(),
        },
        "seconds": round(time.time() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"torch_false_alarms_{key}.json").write_text(json.dumps(document, indent=2))
    if args.update:
        last = json.loads(LAST_RUN.read_text()) if LAST_RUN.exists() else {}
        last[key] = document
        LAST_RUN.write_text(json.dumps(last, indent=2) + "\n")


if __name__ == "__main__":
    main()
