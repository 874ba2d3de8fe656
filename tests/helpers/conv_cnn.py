"""The tests' small Keras CNN (conv_nets in conftest.py), also the network of bench/three_implementations.py."""

from __future__ import annotations

import numpy as np


def conv_cnn(tf, bias: bool):
    """8x8x1 -> conv_a (3x3, same, ReLU) -> max pool -> conv_b (3x3, valid, ReLU) -> flatten -> dense(3), seeded
    weights; kernels are not symmetric, so a kernel applied transposed sends relevance elsewhere."""
    layers = tf.keras.layers
    model = tf.keras.Sequential(
        [
            layers.Conv2D(4, 3, padding="same", activation="relu", use_bias=bias, input_shape=(8, 8, 1), name="conv_a"),
            layers.MaxPooling2D(2, name="pool"),
            layers.Conv2D(4, 3, activation="relu", use_bias=bias, name="conv_b"),
            layers.Flatten(name="flatten"),
            layers.Dense(3, use_bias=bias, name="dense"),
        ]
    )
    rng = np.random.default_rng(7)
    weights = [
        rng.normal(0.0, 0.6, w.shape) if w.ndim > 1 else rng.normal(0.1, 0.2, w.shape) for w in model.get_weights()
    ]
    model.set_weights([w.astype(np.float32) for w in weights])
    return model
