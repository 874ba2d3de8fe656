"""Configuration: the rule file, command-line options and ini keys, analyzer names and parameters.

Everything is validated here at collection time, without TensorFlow (a test asserts it).
May import: pytest_lrp.base only.
"""
