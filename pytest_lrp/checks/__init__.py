"""The properties a finished analysis is judged by: conservation, finite, positive,
batch invariance, determinism and golden baselines; and the Analysis record they read.

Pure numpy, no TensorFlow or torch (a test asserts it). May import: models, config, base.
"""
