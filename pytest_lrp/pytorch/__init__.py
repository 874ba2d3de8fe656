"""The PyTorch backend: modules named by Python code, explained with zennit and captum.

What lives here: importing torch, zennit and captum with one line when they are missing (runtime.py),
loading a module from ``file.py:name`` or ``module:name`` (loading.py), building each library's analyzer
from a rule (analyzers.py), and running it into the framework-free Analysis record with relevance per
module, functional operations included (analysis.py, layers.py); the module read into the numpy
reference's layers (graph.py) and judged by it (reference.py); workarounds for zennit and torch
(upstream_fixes.py).

May import: checks (the Analysis record, the reruns, the reference's run), reference (its model), models
(inputs), config, base. Never TensorFlow or innvestigate: a session testing only PyTorch models does not
import them.
"""
