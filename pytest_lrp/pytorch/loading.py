"""A PyTorch module named by Python code: ``models.py:make_net`` (a file) or ``torchvision.models:resnet18``.

The name is an ``nn.Module`` or a callable without arguments that returns one. Naming the code runs it, as a
conftest.py runs: the user's own code, chosen on the command line or in the rule file. The module is put in
eval mode on the chosen device; its parameters need no gradients (the analyzers take them w.r.t. the input).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base.errors import LrpUsageError, shown
from ..base.lazy import np
from ..config.model_spec import PythonModel
from .runtime import torch


@dataclass
class TorchModel:
    path: PythonModel
    name: str
    module: Any = field(repr=False)  # a torch.nn.Module
    device: str = "cpu"
    sample_shape: tuple | None = None  # one sample's shape, given by the user (a module declares none)
    keras3_version: None = None  # the reports ask every model; only Keras files have one
    check_overrides: dict = field(default_factory=dict, repr=False)
    # The parameters and buffers as loaded: an analyzer that crashes half-way (a canonizer merging layers)
    # may leave them changed, and the next rule must explain the model as it was loaded (restore()).
    pristine: dict = field(default_factory=dict, repr=False)
    # The numpy reference's copies (or why there is none), by canonizers and input shape (pytorch/reference.py).
    reference_models: dict = field(default_factory=dict, repr=False)

    def digest(self) -> str:
        """sha256 of the parameters and buffers as loaded, with their names: the model's identity for baselines."""
        found = hashlib.sha256()
        for key in sorted(self.pristine):
            found.update(key.encode() + b"\0")
            found.update(np.ascontiguousarray(self.pristine[key].detach().cpu().numpy()).tobytes())
        return found.hexdigest()

    def restore(self) -> None:
        # Not strict: a canonizer's own submodules (zennit's ResNetCanonizer adds a sum module) stay registered.
        self.module.load_state_dict(self.pristine, strict=False)

    def notes_for(self, rule) -> list:
        return []

    @property
    def input_shape(self) -> tuple:
        if self.sample_shape is None:
            raise LrpUsageError(
                f"{self.path}: a PyTorch module declares no input shape; give inputs (--lrp-inputs) or one sample's "
                "shape for random ones (--lrp-input-shape=3,64,64 or the rule file's defaults.input_shape)"
            )
        return (None, *self.sample_shape)

    def predict(self, x: np.ndarray) -> np.ndarray:
        t = torch()
        with t.no_grad():
            out = self.module(t.as_tensor(np.ascontiguousarray(x), dtype=t.float32, device=self.device))
        return out.detach().cpu().numpy().reshape(len(x), -1)


def load_python_model(spec: PythonModel, name: str, device: str, sample_shape: tuple | None) -> TorchModel:
    t = torch()
    if device != "cpu" and device.startswith("cuda") and not t.cuda.is_available():
        raise LrpUsageError(f"{spec}: device {device!r} asked for, but torch sees no CUDA device here")
    namespace = _import(spec)
    if not hasattr(namespace, spec.attr):
        raise LrpUsageError(f"{spec}: {spec.source if not spec.is_file else shown(spec.source)} has no {spec.attr!r}")
    found = getattr(namespace, spec.attr)
    if not isinstance(found, t.nn.Module):
        if not callable(found):
            raise LrpUsageError(
                f"{spec}: {spec.attr!r} is a {type(found).__name__}, neither a torch.nn.Module nor a callable returning one"
            )
        try:
            found = found()
        except Exception as exc:  # the user's factory: its first line, without the traceback
            raise LrpUsageError(
                f"{spec}: calling {spec.attr}() failed ({type(exc).__name__}: {_first_line(exc)})"
            ) from None
        if not isinstance(found, t.nn.Module):
            raise LrpUsageError(f"{spec}: {spec.attr}() returned a {type(found).__name__}, not a torch.nn.Module")
    try:
        module = found.to(device).eval()
    except Exception as exc:
        raise LrpUsageError(
            f"{spec}: cannot move the module to {device!r} ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    pristine = {key: value.detach().clone() for key, value in module.state_dict().items()}
    return TorchModel(path=spec, name=name, module=module, device=device, sample_shape=sample_shape, pristine=pristine)


def _import(spec: PythonModel):
    if not spec.is_file:
        try:
            return importlib.import_module(spec.source)
        except Exception as exc:
            raise LrpUsageError(
                f"{spec}: cannot import {spec.source} ({type(exc).__name__}: {_first_line(exc)})"
            ) from None
    path = Path(spec.source)
    if not path.is_file():
        raise LrpUsageError(f"{spec}: model file not found")
    # A name of its own per file, so that two models.py in different folders do not replace each other.
    unique = f"_lrp_model_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if unique in sys.modules:
        return sys.modules[unique]
    loader_spec = importlib.util.spec_from_file_location(unique, path)
    assert loader_spec is not None and loader_spec.loader is not None
    namespace = importlib.util.module_from_spec(loader_spec)
    sys.path.insert(0, str(path.parent))  # the file may import its neighbours, as a conftest.py can
    try:
        loader_spec.loader.exec_module(namespace)
    except Exception as exc:
        raise LrpUsageError(
            f"{spec}: running {shown(path)} failed ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    finally:
        sys.path.remove(str(path.parent))
    sys.modules[unique] = namespace
    return namespace


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
