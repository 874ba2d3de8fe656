"""Write the Keras 3 model files that tests/test_keras3.py reads, with Keras 3 itself.

Run with a Keras 3 environment (not the project's tf.keras 2 one), from anywhere:

    KERAS_BACKEND=jax /work/venvk3/bin/python tests/data/keras3/make_keras3_files.py

For every network NAME it writes, next to this script:
  NAME.keras          the Keras 3 archive (config.json, metadata.json, model.weights.h5)
  NAME.h5             the legacy HDF5 file Keras 3 writes for a .h5 name
  NAME_weights.npz    every layer's weights as '<layer name>/<index>' (get_weights() order), so
                      the tests can build the same network by hand in tf.keras 2
  NAME_inputs.npz     x (inputs) and y (model.predict(x) here, final activation included)
and VERSIONS.txt with the versions that wrote them. The weights are seeded, not trained: the
tests only need a network whose every layer changes the output.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import numpy as np
from keras import layers

HERE = Path(__file__).resolve().parent
SAMPLES = 4


def seq_cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(4, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(6, activation="relu"),
            layers.Dropout(0.25),
            layers.Dense(3),
            layers.Activation("softmax"),
        ],
        name="seq_cnn",
    )


def functional():
    """2D, 1D and 3D convolutions, BN, merges, paddings and reshapes in one network.

    The merge layers are named: with Keras' default names ('add'), innvestigate's
    analyzers clash with the layers they add themselves (issue 14, part 3).
    """
    inputs = keras.Input((8, 8, 2), name="image")
    x = layers.ZeroPadding2D(1)(inputs)
    x = layers.Conv2D(4, 3, name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    a = layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise")(x)
    b = layers.SeparableConv2D(4, 3, padding="same", activation="relu", name="separable")(x)
    x = layers.Add(name="sum")([a, b])
    x = layers.Concatenate(name="joined")([x, a])
    x = layers.AveragePooling2D(2, name="avg")(x)
    x = layers.Conv2D(4, 1, activation="relu", name="mix")(x)
    x = layers.Reshape((16, 4), name="to_sequence")(x)
    x = layers.Conv1D(4, 3, padding="same", activation="relu", name="conv1d")(x)
    x = layers.MaxPooling1D(2, name="pool1d")(x)
    x = layers.Reshape((2, 2, 2, 4), name="to_volume")(x)
    x = layers.Conv3D(3, 2, padding="same", activation="relu", name="conv3d")(x)
    x = layers.GlobalAveragePooling3D(name="gap3d")(x)
    x = layers.Dropout(0.1, name="drop")(x)
    x = layers.Dense(5, activation="relu", name="hidden")(x)
    outputs = layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name="functional")


def pools():
    """The remaining pooling layers, on a 1D and a 2D path, after the preprocessing layers EfficientNets start with."""
    inputs = keras.Input((12, 3), name="signal")
    x = layers.Rescaling(2.0, offset=-1.0, name="rescale")(inputs)
    x = layers.Normalization(axis=-1, name="norm")(x)
    x = layers.Conv1D(4, 3, activation="relu", name="c1")(x)
    x = layers.AveragePooling1D(2, name="avg1")(x)
    g1 = layers.GlobalMaxPooling1D(name="gmax1")(x)
    g2 = layers.GlobalAveragePooling1D(name="gavg1")(x)
    y = layers.Reshape((5, 4, 1), name="to_image")(x)
    y = layers.Conv2D(2, 2, padding="same", activation="relu", name="c2")(y)
    y = layers.MaxPooling2D(2, padding="same", name="max2")(y)
    g3 = layers.GlobalMaxPooling2D(name="gmax2")(y)
    g4 = layers.GlobalAveragePooling2D(name="gavg2")(y)
    x = layers.Concatenate(name="all")([g1, g2, g3, g4])
    x = layers.Activation("relu", name="act")(x)
    outputs = layers.Dense(2, activation="softmax", name="out")(x)
    return keras.Model(inputs, outputs, name="pools")


def randomize(model, rng):
    """Seeded weights; BN statistics away from 0/1 so that a swapped mean/variance shows."""
    for layer in model.layers:
        values = []
        for w in layer.weights:
            shape = tuple(w.shape)
            if "count" in w.path:
                values.append(np.array(100))
            elif "variance" in w.path:
                values.append(rng.uniform(0.5, 2.0, shape))
            else:
                values.append(rng.normal(0.1, 0.5, shape))
        if values:
            layer.set_weights([v.astype(np.float32) for v in values])
            if hasattr(layer, "finalize_state"):
                # Normalization computes its mean/variance tensors from the weights only here;
                # without it predict() would use the old ones, and reloading the file the new ones.
                layer.finalize_state()


def main():
    rng = np.random.default_rng(14)
    for build in (seq_cnn, functional, pools):
        model = build()
        randomize(model, rng)
        name = model.name
        x = rng.uniform(0, 1, (SAMPLES, *tuple(model.input_shape[1:]))).astype(np.float32)
        y = model.predict(x, verbose=0)
        np.savez(HERE / f"{name}_inputs.npz", x=x, y=y)
        np.savez(
            HERE / f"{name}_weights.npz",
            **{f"{layer.name}/{i}": w for layer in model.layers for i, w in enumerate(layer.get_weights())},
        )
        model.save(HERE / f"{name}.keras")
        model.save(HERE / f"{name}.h5")
    import h5py
    import jax

    (HERE / "VERSIONS.txt").write_text(
        f"python {sys.version.split()[0]}\nkeras {keras.__version__}\nbackend {keras.backend.backend()}\n"
        f"jax {jax.__version__}\nnumpy {np.__version__}\nh5py {h5py.__version__}\n"
    )


if __name__ == "__main__":
    main()
