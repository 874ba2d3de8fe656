"""Workarounds for zennit and torch, each scoped to the run that needs it, with the versions it is for.

- zennit 1.0's ``MergeBatchNorm`` (every canonizer that merges BatchNorm: SequentialMergeBatchNorm,
  ResNetCanonizer, VGGCanonizer on VGG-BN) turns the BatchNorm into the identity with ``eps = 0``; torch 2.11
  (and others of that time) refuses ``eps <= 0`` in ``F.batch_norm`` even in eval mode ("batch_norm eps must
  be positive"), where torch 2.14 refuses it during training only. Where this torch refuses it, the merge
  leaves ``eps`` at the smallest positive float32 instead: ``sqrt(1 + eps)`` is then exactly 1 in float32, so
  the BatchNorm is still the identity, and nothing else changes. zennit restores the module's own ``eps``
  when the canonizer is removed, as before.
"""

from __future__ import annotations

import contextlib
import functools

from .runtime import library, torch

TINY_EPS = 1.1754943508222875e-38  # float32's smallest normal number


@functools.lru_cache(maxsize=1)
def refuses_zero_eps() -> bool:
    """Whether this torch's ``F.batch_norm`` raises for ``eps = 0`` in eval mode."""
    t = torch()
    x, ones, zeros = t.ones(1, 1, 1), t.ones(1), t.zeros(1)
    try:
        t.nn.functional.batch_norm(x, zeros, ones, ones, zeros, training=False, eps=0.0)
    except ValueError:
        return True
    return False


@contextlib.contextmanager
def batch_norm_merge_with_positive_eps():
    """zennit's BatchNorm merge, with ``eps`` left positive where torch requires it (see the module's doc)."""
    if not refuses_zero_eps():
        yield
        return
    merge = library("zennit.canonizers").MergeBatchNorm
    original = merge.__dict__["merge_batch_norm"]

    def merge_batch_norm(modules, batch_norm):
        original.__func__(modules, batch_norm)
        if batch_norm.eps == 0:
            object.__setattr__(batch_norm, "eps", TINY_EPS)

    merge.merge_batch_norm = staticmethod(merge_batch_norm)
    try:
        yield
    finally:
        merge.merge_batch_norm = original
