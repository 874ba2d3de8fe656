"""Which LXT patch map explains a model, and what pytest-lrp adds to LXT 2.1 to make its maps fit.

LXT 2.1 (``lxt.efficient.models``) has AttnLRP maps for Llama, Qwen2, Qwen3, Gemma3, BERT and GPT-2 and
CP-LRP maps for all but BERT, each for one transformers modeling module. Written for lxt 2.1 with
transformers 4.52; what is added here, each scoped to one analysis by patching.py:

- ViT (transformers' ``modeling_vit``; LXT maps only torchvision's ViT): LXT's own patches, put together as
  its Llama and torchvision maps do: attention functions (AttnLRP or CP-LRP), LayerNorm by the identity rule,
  the GELU activation module by the identity rule, dropout off.
- BERT: LXT's map replaces the classes of ``modeling_bert`` by its copies, which only models built after the
  patch are made of; a model built before keeps transformers' classes and is explained unpatched. For the
  analysis, each of the model's modules of such a class takes the same-named LXT class (the same attributes:
  LXT's module is a copy of transformers'), and its own class back after.
"""

from __future__ import annotations

import contextlib
from functools import partial

import pytest

from .runtime import library

FAMILIES = ("llama", "qwen2", "qwen3", "gemma3", "bert", "gpt2", "vit")
MAPS = {"lxt.attnlrp": "attnLRP", "lxt.cp_lrp": "cp_LRP"}


def patch_map(analyzer: str, model) -> dict:
    """The patch map for ``analyzer`` on ``model`` (a TransformerModel); {} for the unpatched baseline."""
    if analyzer == "lxt.input_x_gradient":
        return {}
    family = model.family
    if analyzer == "lxt.explicit":
        from .explicit import explicit_patch_map

        found = explicit_patch_map(model.module)
        if found is None:
            raise _unsupported(model, "LXT's explicit rules", "llama")
        return found
    if family == "vit":
        return _vit_map(MAPS[analyzer])
    if family not in FAMILIES:
        raise _unsupported(model, "LXT", ", ".join(FAMILIES))
    maps = library(f"lxt.efficient.models.{family}")
    found = getattr(maps, MAPS[analyzer], None)
    if found is None:
        having = [f for f in FAMILIES[:-1] if hasattr(library(f"lxt.efficient.models.{f}"), MAPS[analyzer])]
        raise _unsupported(model, f"LXT's {MAPS[analyzer]} map", ", ".join([*having, "vit"]))
    return found


def _unsupported(model, what: str, known: str):
    """LXT refuses the model: a skipped test that says so (as captum's refusals), not an error of the user's."""
    return pytest.skip.Exception(
        f"no patches of {what} for transformers' {model.family} models ({type(model.module).__name__}; "
        f"supported: {known})"
    )


def _vit_map(kind: str) -> dict:
    patches = library("lxt.efficient.patches")
    modeling_vit = library("transformers.models.vit.modeling_vit")
    activations = library("transformers.activations")
    nn = library("torch.nn")
    return {
        activations.GELUActivation: partial(patches.patch_method, patches.non_linear_forward, keep_original=True),
        nn.LayerNorm: partial(patches.patch_method, patches.layer_norm_forward),
        nn.Dropout: partial(patches.patch_method, patches.dropout_forward),
        modeling_vit: patches.patch_attention if kind == "attnLRP" else patches.patch_cp_attention,
    }


@contextlib.contextmanager
def bert_classes(model):
    """A BERT built before LXT's patch made of LXT's classes for the analysis (module docstring)."""
    if model.family != "bert":
        yield
        return
    patched = library("lxt.efficient.models.bert")
    swapped = []
    for module in model.module.modules():
        cls = type(module)
        if cls.__module__ == "transformers.models.bert.modeling_bert" and isinstance(
            getattr(patched, cls.__name__, None), type
        ):
            swapped.append((module, cls))
            module.__class__ = getattr(patched, cls.__name__)
    try:
        yield
    finally:
        for module, cls in swapped:
            module.__class__ = cls
