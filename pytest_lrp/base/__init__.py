"""What every other part uses: the user-facing exceptions, lazy imports and atomic writes.

`tf_runtime` is the one place TensorFlow and innvestigate are imported (lazily, on
first analysis). Modules here import nothing else of pytest_lrp.
"""
