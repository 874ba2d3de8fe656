"""The PyTorch example: a small CNN trained on scikit-learn's digits (16x16, one channel), as a user writes one.

    pytest --lrp-model=examples/torch_cnn.py:cnn --lrp-inputs=examples/digits_16x16.npy

`cnn()` builds the network and loads its trained weights from torch_cnn.pt (a state dict, read with
weights_only=True); train_torch_cnn.py wrote them.
"""

from pathlib import Path

import torch
from torch import nn

WEIGHTS = Path(__file__).with_name("torch_cnn.pt")


def build() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.25),
        nn.Linear(64, 10),
    )


def cnn() -> nn.Module:
    net = build()
    net.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    return net
