"""The analyzer names innvestigate knows, read without importing it.

Validating a rule file happens at collection time, where importing innvestigate
would pull in TensorFlow (about 6 s) for runs that may never analyze anything.
The names are therefore read from the ``analyzers`` dict literal in
innvestigate's source; the list below is the fallback for 2.1.2.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
from pathlib import Path

KNOWN_IN_2_1_2 = (
    "input random gradient gradient.baseline input_t_gradient deconvnet guided_backprop "
    "integrated_gradients smoothgrad lrp lrp.z lrp.epsilon lrp.w_square lrp.flat "
    "lrp.alpha_beta lrp.alpha_2_beta_1 lrp.alpha_2_beta_1_IB lrp.alpha_1_beta_0 "
    "lrp.alpha_1_beta_0_IB lrp.z_plus lrp.z_plus_fast lrp.sequential_preset_a "
    "lrp.sequential_preset_b lrp.sequential_preset_a_flat lrp.sequential_preset_b_flat "
    "lrp.sequential_preset_b_flat_until_idx deep_taylor deep_taylor.bounded"
).split()


@functools.lru_cache(maxsize=1)
def analyzer_names() -> tuple[str, ...]:
    try:
        spec = importlib.util.find_spec("innvestigate")
        if spec is None or not spec.submodule_search_locations:
            return tuple(KNOWN_IN_2_1_2)
        source = Path(spec.submodule_search_locations[0], "analyzer", "__init__.py").read_text()
        return tuple(_dict_keys(ast.parse(source), "analyzers")) or tuple(KNOWN_IN_2_1_2)
    except Exception:  # not installed, moved, or unparsable: fall back to the known list
        return tuple(KNOWN_IN_2_1_2)


def _dict_keys(tree: ast.Module, name: str) -> list[str]:
    for node in tree.body:
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and target.id == name and isinstance(value, ast.Dict):
            return [k.value for k in value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    return []


def close_matches(name: str, others=()) -> list[str]:
    return difflib.get_close_matches(name, [*analyzer_names(), *others], n=3, cutoff=0.5)
