"""Running innvestigate: one analysis per (model, rule) in a TensorFlow graph of its own,
per-layer relevance, reruns, and the run-wide workbench that caches models and analyses.

May import: checks (the Analysis record), models, config, base.
"""
