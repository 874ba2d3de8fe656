"""A residual CNN of Conv-BN-ReLU blocks for the tests of engine/speedup.py and of real architectures."""

from __future__ import annotations

import numpy as np


def residual_cnn(tf, blocks: int, named: bool, size: int = 8, seed: int = 0, dropout: bool = True):
    """Conv-BN-ReLU blocks with Add and Dropout, GlobalAveragePooling2D, softmax; built in a graph of its own,
    so that Keras' default names start at 'add', 're_lu', ... as in a fresh user session."""
    layers = tf.keras.layers

    def name(text):
        return {"name": text} if named else {}

    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        inputs = layers.Input((size, size, 3), **name("image"))
        x = layers.Conv2D(6, 3, padding="same", **name("stem_conv"))(inputs)
        x = layers.BatchNormalization(**name("stem_bn"))(x)
        x = layers.ReLU(**name("stem_relu"))(x)
        for i in range(blocks):
            y = layers.Conv2D(6, 3, padding="same", **name(f"b{i}_conv1"))(x)
            y = layers.BatchNormalization(**name(f"b{i}_bn1"))(y)
            y = layers.ReLU(**name(f"b{i}_relu1"))(y)
            if dropout:
                y = layers.Dropout(0.5, **name(f"b{i}_drop"))(y)
            y = layers.Conv2D(6, 3, padding="same", **name(f"b{i}_conv2"))(y)
            y = layers.BatchNormalization(**name(f"b{i}_bn2"))(y)
            x = layers.ReLU(**name(f"b{i}_relu2"))(layers.Add(**name(f"b{i}_add"))([x, y]))
        x = layers.GlobalAveragePooling2D(**name("pool"))(x)
        outputs = layers.Dense(4, activation="softmax", **name("logits"))(x)
        model = tf.keras.Model(inputs, outputs)
        # Trained-looking BatchNormalization statistics and biases: the defaults (mean 0, var 1, bias 0) hide a lot.
        model.set_weights(
            [
                rng.normal(0, 0.4, w.shape).astype(np.float32)
                if "variance" not in v.name
                else rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                for w, v in zip(model.get_weights(), model.weights)
            ]
        )
        names = [layer.name for layer in model.layers]
    return model, names, graph
