"""pytest-lrp's default rule suite, shipped in the package.

`pytest --lrp-model=m.h5` in a project without a rule file runs it, and
`pytest --lrp-write-rules=rules.yaml` writes an editable copy. The project's own
rules.yaml is the one source: this copy is it without the lines that point at the
example model (tests/test_default_suite.py keeps the two identical otherwise).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..base.atomic import write_atomically
from ..base.errors import LrpUsageError, shown

PACKAGED_RULES = Path(__file__).with_name("default_rules.yaml")
# For PyTorch models (zennit and captum), used where every model given is one.
PACKAGED_TORCH_RULES = Path(__file__).with_name("default_rules_torch.yaml")
WRITE_FLAG = "--lrp-write-rules"
# Keys under `defaults:` that belong to the example (examples/cnn.hdf5 and its digits): a
# user's model needs its own inputs, and a sample count would refuse a smaller input file.
EXAMPLE_ONLY = ("models", "inputs", "samples")
_EXAMPLE_LINE = re.compile(r"^  ({}):.*\n".format("|".join(EXAMPLE_ONLY)), re.MULTILINE)


def without_example(text: str) -> str:
    """The project's rules.yaml as it is packaged: the same text without the example's defaults."""
    return _EXAMPLE_LINE.sub("", text)


def write_rules(path: Path, torch: bool = False) -> Path:
    """Write an editable copy of the packaged suite (the PyTorch one with ``torch``); an existing file is never
    overwritten."""
    path = Path(path)
    if path.exists():
        raise LrpUsageError(
            f"{shown(path)}: already exists; {WRITE_FLAG} does not overwrite a rule file (remove it or name another path)"
        )
    text = (PACKAGED_TORCH_RULES if torch else PACKAGED_RULES).read_bytes()
    return write_atomically(path, lambda f: f.write(text))
