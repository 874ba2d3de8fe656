"""Train the PyTorch example (torch_cnn.py) on scikit-learn's digits; write torch_cnn.pt and digits_16x16.npy.

python examples/train_torch_cnn.py
"""

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch_cnn import WEIGHTS, build

HERE = Path(__file__).parent


def main() -> None:
    torch.manual_seed(0)
    digits = load_digits()
    x = (np.kron(digits.images, np.ones((2, 2))) / 16.0)[:, None].astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = torch.tensor(x[order]), torch.tensor(digits.target[order])
    net = build()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(6):
        net.train()
        for start in range(0, 1400, 32):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x[start : start + 32]), y[start : start + 32])
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(x[1400:]).argmax(1) == y[1400:]).float().mean())
    print(f"held-out accuracy {accuracy:.3f}")
    torch.save(net.state_dict(), WEIGHTS)
    np.save(HERE / "digits_16x16.npy", x[1400:1416].numpy())  # 16 held-out digits, NCHW


if __name__ == "__main__":
    main()
