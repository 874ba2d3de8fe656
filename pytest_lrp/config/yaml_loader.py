"""Reading a rule file's YAML the way users write it: YAML 1.2 numbers, no silently repeated keys.

PyYAML implements YAML 1.1, where ``1e-9`` (no dot) is a string and ``010`` is
octal 8; every other tool a user checks a rule file with (YAML 1.2, JSON) reads
them as the numbers 1e-09 and 10. A mapping that gives a key twice keeps the
last value in PyYAML; here it is an error naming the line and the key.
Booleans keep YAML 1.1's spellings (yes/no/on/off): they are unambiguous in a rule file.
"""

from __future__ import annotations

import re

from ..base.lazy import yaml

INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
MERGE_TAG = "tag:yaml.org,2002:merge"

# The YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution).
CORE_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
CORE_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
NUMBER_START = list("-+0123456789.")


class DuplicateKey(Exception):
    """A key given twice in one mapping; lines are 1-based."""

    def __init__(self, key, line: int, first_line: int):
        super().__init__(f"line {line}: key {key!r} given twice in one mapping (first on line {first_line})")
        self.key, self.line, self.first_line = key, line, first_line


def load(text: str):
    """The document in ``text``; raises yaml.YAMLError for a syntax error, DuplicateKey for a repeated key."""
    return yaml.load(text, Loader=_loader())


def _loader():
    """The loader class, built per call (microseconds, once per rule file): PyYAML is imported
    lazily, and a class kept across pytester's in-process runs, which re-import yaml, would
    raise another module's YAMLError."""

    class RuleFileLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if node.id == "mapping":
                _reject_repeated_keys(self, node)
            return super().construct_mapping(node, deep=deep)

    # Copy before changing: the resolver table is a class attribute shared with SafeLoader.
    RuleFileLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in (INT_TAG, FLOAT_TAG)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    # Integers first: a YAML 1.2 float pattern also matches "10".
    RuleFileLoader.add_implicit_resolver(INT_TAG, CORE_INT, NUMBER_START)
    RuleFileLoader.add_implicit_resolver(FLOAT_TAG, CORE_FLOAT, NUMBER_START)
    RuleFileLoader.add_constructor(INT_TAG, _construct_int)
    return RuleFileLoader


def _construct_int(loader, node) -> int:
    text = loader.construct_scalar(node)
    # "010" is ten in YAML 1.2 (octal is written 0o10); int(text, 0) refuses leading zeros.
    return int(text, 0) if text[:2] in ("0o", "0x") else int(text, 10)


def _reject_repeated_keys(loader, node) -> None:
    first_lines: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:  # '<<: *defaults' entries may be overridden by design
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:  # an unhashable key: PyYAML's own error names it
            continue
        line = key_node.start_mark.line + 1
        if key in first_lines:
            raise DuplicateKey(key, line, first_lines[key])
        first_lines[key] = line
