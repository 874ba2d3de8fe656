"""pytest-lrp: relevance-conservation regression tests for Keras models explained with iNNvestigate."""

__version__ = "0.1.0"
