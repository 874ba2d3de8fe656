"""Running innvestigate: one analysis per (model, rule) in a TensorFlow graph of its own,
per-layer relevance, reruns, and the run-wide workbench that caches models and analyses.

PyTorch models go to the PyTorch backend (pytorch/), the one place the workbench hands them to.

May import: pytorch, checks (the Analysis record), models, config, base.
"""
