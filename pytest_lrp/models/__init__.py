"""Model and input files: reading every supported format, the trust policy, inputs, supported structures.

Loading a model needs TensorFlow (through base.tf_runtime, on first use).
May import: pytest_lrp.base and pytest_lrp.config.
"""
