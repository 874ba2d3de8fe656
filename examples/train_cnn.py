"""Rebuild examples/cnn.hdf5 and examples/digits.npz, deterministically and offline.

The architecture is the one from the original bug report (innvestigate issue 116):
Conv32-MaxPool-Conv32-MaxPool-Dense512-Dense10-softmax. MNIST cannot be
downloaded here, so scikit-learn's bundled 8x8 digits are scaled to 28x28
(each pixel a 3x3 block, a 2-pixel zero border, values in [0, 1]): like MNIST,
a digit on a zero background, which is what makes some LRP rules leak.

    python examples/train_cnn.py
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
SEED = 116  # the bug report's issue number
TEST_DIGITS = 64


def digits_28x28():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images, np.ones((3, 3))) / 16.0  # 8x8 -> 24x24
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))  # -> 28x28 with a zero border
    order = np.random.default_rng(SEED).permutation(len(images))
    return images[order, :, :, None].astype(np.float32), digits.target[order].astype(np.int64)


def build_cnn():
    import tensorflow as tf

    layers = tf.keras.layers
    return tf.keras.Sequential(
        [
            layers.Conv2D(32, (3, 3), padding="same", activation="relu", input_shape=(28, 28, 1)),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(32, (3, 3), padding="same", activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dense(512, activation="relu"),
            layers.Dense(10),
            layers.Activation("softmax"),
        ]
    )


def main() -> None:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    x, y = digits_28x28()
    x_train, y_train = x[:-300], y[:-300]
    x_test, y_test = x[-300:], y[-300:]
    model = build_cnn()
    model.compile(loss="sparse_categorical_crossentropy", optimizer=tf.keras.optimizers.Adam(), metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=10, shuffle=True, verbose=2)
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test accuracy {accuracy:.3f} on {len(x_test)} digits")
    model.save(HERE / "cnn.hdf5", include_optimizer=False)
    # y: the model's outputs recorded where it was trained, which pytest-lrp checks the analyzed
    # model reproduces (README "Supported model formats"); the classes go under another name.
    x_kept = x_test[:TEST_DIGITS]
    outputs = np.asarray(model(x_kept, training=False))
    np.savez_compressed(HERE / "digits.npz", x=x_kept, y=outputs, labels=y_test[:TEST_DIGITS])
    print(f"wrote {HERE / 'cnn.hdf5'} and {HERE / 'digits.npz'} ({TEST_DIGITS} test digits)")


if __name__ == "__main__":
    main()
