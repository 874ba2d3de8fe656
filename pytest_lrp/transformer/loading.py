"""A transformers model and its inputs: token ids with an attention mask, or pixel values.

``--lrp-model=models.py:make_llama`` names a callable returning a ``PreTrainedModel`` (the PyTorch loader,
pytorch/loading.py, runs it). A text model's inputs are an ``.npz`` with ``input_ids`` (samples x tokens) and
optionally ``attention_mask`` (1 for a token, 0 for padding) and ``tokens`` (the token strings, for the HTML
page); a vision model's an ``.npz`` with ``pixel_values`` (samples x channels x height x width). Without a
file, seeded random ones: token ids of the vocabulary, right-padded to different lengths so that the batch
invariance check sees the attention mask at work, or normal pixel values of the configured image size.

Inside pytest-lrp a text batch is one integer array (samples, 2, tokens): ids and mask, so that the checks
that split a batch (batch_invariance) split both. The explained output of a model whose logits are per token
(a causal LM) is at the last token the mask keeps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from ..base.errors import LrpUsageError, shown
from ..base.lazy import np
from ..models.inputs import read_arrays
from ..pytorch.loading import TorchModel
from ..pytorch.runtime import torch

DEFAULT_TOKENS = 16


@dataclass
class TransformerModel(TorchModel):
    kind: str = "text"  # or "vision"
    tokens: np.ndarray | None = field(default=None, repr=False)  # token strings from the inputs file

    @property
    def config(self):
        return self.module.config

    @property
    def family(self) -> str:
        """transformers' modeling module of the model's class (or of the transformers class it derives from):
        'llama', 'gpt2', 'bert', 'vit', ..."""
        for cls in type(self.module).__mro__:
            if cls.__module__.startswith("transformers.models."):
                return cls.__module__.split(".")[-1].removeprefix("modeling_")
        return type(self.module).__module__

    @property
    def input_shape(self) -> tuple:
        if self.kind == "vision":
            size = self.config.image_size
            return (None, self.config.num_channels, size, size)
        return (None, 2, self.sample_shape[0] if self.sample_shape else DEFAULT_TOKENS)

    def load_inputs(self, path: Path | None, samples: int | None, seed: int) -> np.ndarray:
        if path is None:
            return self._random(samples or 8, seed)
        return self._read(Path(path), samples)

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch().no_grad():
            return self.logits(x).double().cpu().numpy()

    def logits(self, x: np.ndarray, **inputs):
        """The logits explained per sample (samples x classes): at the last kept token for per-token logits."""
        t = torch()
        if self.kind == "vision":
            inputs.setdefault("pixel_values", t.as_tensor(x, dtype=t.float32, device=self.device))
            out = self.module(**inputs).logits
            return out.reshape(len(x), -1)
        ids, mask = self.split(x)
        if "inputs_embeds" not in inputs:
            inputs["input_ids"] = ids
        with per_token_scores(self.module) as scores:
            out = self.module(attention_mask=mask, **inputs).logits
        if scores:
            out = scores[0]
        if out.dim() == 3:
            last = last_tokens(mask)
            out = out[t.arange(len(x), device=out.device), last]
        return out.reshape(len(x), -1)

    def split(self, x: np.ndarray):
        t = torch()
        ids = t.as_tensor(np.ascontiguousarray(x[:, 0]), dtype=t.long, device=self.device)
        mask = t.as_tensor(np.ascontiguousarray(x[:, 1]), dtype=t.long, device=self.device)
        return ids, mask

    def _random(self, samples: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if self.kind == "vision":
            return rng.standard_normal((samples, *self.input_shape[1:]), dtype=np.float32)
        length = self.input_shape[2]
        ids = rng.integers(0, self.config.vocab_size, size=(samples, length))
        mask = np.ones_like(ids)
        for i in range(samples):  # lengths length, length-2, ...: padding at the end, masked
            mask[i, max(1, length - 2 * (i % 3)) :] = 0
        pad = getattr(self.config, "pad_token_id", None) or 0
        return np.stack([np.where(mask == 1, ids, pad), mask], axis=1).astype(np.int64)

    def _read(self, path: Path, samples: int | None) -> np.ndarray:
        arrays = read_arrays(path)
        if isinstance(arrays, np.ndarray):
            raise LrpUsageError(f"{shown(path)}: {self._expected()}; it holds one unnamed array")
        wanted = "pixel_values" if self.kind == "vision" else "input_ids"
        if wanted not in arrays:
            raise LrpUsageError(f"{shown(path)}: {self._expected()}; it has {sorted(arrays)}")
        first = arrays[wanted]
        if first.ndim < 2 or len(first) == 0:
            raise LrpUsageError(f"{shown(path)}: {wanted} holds no samples (shape {first.shape})")
        count = len(first) if samples is None else samples
        if count > len(first):
            raise LrpUsageError(f"{shown(path)}: {samples} samples asked for, but {wanted} holds {len(first)}")
        if self.kind == "vision":
            return self._pixels(path, first[:count])
        return self._text(path, arrays, count)

    def _expected(self) -> str:
        if self.kind == "vision":
            return f"a vision model's inputs are 'pixel_values' (samples x {self.config.num_channels} x H x W)"
        return "a text model's inputs are 'input_ids' (samples x tokens), with 'attention_mask' and 'tokens' optional"

    def _pixels(self, path: Path, x: np.ndarray) -> np.ndarray:
        if x.ndim != 4 or x.shape[1] != self.config.num_channels or not np.issubdtype(x.dtype, np.number):
            raise LrpUsageError(
                f"{shown(path)}: pixel_values of shape {x.shape} ({x.dtype}) do not fit the model: "
                f"samples x {self.config.num_channels} x H x W numbers"
            )
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise LrpUsageError(f"{shown(path)}: pixel_values contain NaN or Inf")
        return x

    def _text(self, path: Path, arrays: dict, count: int) -> np.ndarray:
        ids = arrays["input_ids"][:count]
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise LrpUsageError(
                f"{shown(path)}: input_ids must be integers, samples x tokens; got {ids.shape} {ids.dtype}"
            )
        vocabulary = self.config.vocab_size
        if ids.min() < 0 or ids.max() >= vocabulary:
            raise LrpUsageError(
                f"{shown(path)}: input_ids holds ids from {ids.min()} to {ids.max()}, outside the model's vocabulary "
                f"of {vocabulary} (config.vocab_size)"
            )
        mask = arrays.get("attention_mask")
        if mask is None:
            mask = np.ones_like(ids)
        else:
            mask = mask[:count]
            if mask.shape != ids.shape or not np.isin(mask, (0, 1)).all():
                raise LrpUsageError(
                    f"{shown(path)}: attention_mask must be 0/1 of input_ids' shape {ids.shape}; got {mask.shape}"
                )
            if not mask.any(axis=1).all():
                raise LrpUsageError(
                    f"{shown(path)}: attention_mask keeps no token of sample {int(np.argmin(mask.any(axis=1)))}"
                )
        tokens = arrays.get("tokens")
        if tokens is not None:
            if tokens.shape[1:] != ids.shape[1:] or len(tokens) < count:
                raise LrpUsageError(f"{shown(path)}: tokens must have input_ids' shape {ids.shape}; got {tokens.shape}")
            self.tokens = tokens[:count].astype(str)
        return np.stack([ids, mask], axis=1).astype(np.int64)


@contextlib.contextmanager
def per_token_scores(module):
    """A decoder's sequence classifier (Llama's, Qwen's, GPT-2's ``...ForSequenceClassification``: a ``score``
    head on every token) picks the logits of the last token that is not the pad token in ``input_ids``. Given
    ``inputs_embeds`` (as the analyses give it) it picks the last position whatever the mask, padding
    included, and refuses a batch without a pad token in the config (transformers 4.52). The analyses take
    the per-token scores from the head instead (the last kept token is chosen from the attention mask, as for a
    causal LM), with a pad token set for the call where there is none, so that the model's own pooling, unused,
    does not refuse the batch."""
    head = getattr(module, "score", None)
    if not type(module).__name__.endswith("ForSequenceClassification") or head is None:
        yield []
        return
    scores: list = []
    handle = head.register_forward_hook(lambda sub, args, output: scores.append(output))
    config = module.config
    unset = config.pad_token_id is None
    if unset:
        config.pad_token_id = 0
    try:
        yield scores
    finally:
        handle.remove()
        if unset:
            config.pad_token_id = None


def last_tokens(mask):
    """Per sample, the index of the last token the attention mask keeps (padding on either side)."""
    t = torch()
    positions = t.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return t.where(mask.bool(), positions, t.full_like(positions, -1)).max(dim=1).values


def as_transformer(model: TorchModel) -> TransformerModel:
    """The loaded PyTorch module, known to be a transformers model, with what its inputs and outputs need."""
    config = model.module.config
    kind = "vision" if hasattr(config, "image_size") and hasattr(config, "num_channels") else "text"
    if kind == "text" and not hasattr(config, "vocab_size"):
        raise LrpUsageError(f"{model.path}: a transformers model without vocab_size or image_size: not supported")
    fields = {name: getattr(model, name) for name in TorchModel.__dataclass_fields__}
    return TransformerModel(**fields, kind=kind)
