"""The properties a finished analysis is judged by: conservation, finite, positive,
batch invariance, determinism and golden baselines; and the Analysis record they read.

The numpy reference's run beside an analysis (reference_run.py) is here too, shared by both backends.

Pure numpy, no TensorFlow or torch (a test asserts it). May import: reference, models, config, base.
"""
