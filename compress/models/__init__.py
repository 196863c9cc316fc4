"""Model registry, builders from JSON specs, adapters for torchvision / timm / Hugging Face / user code, and safe weight loading."""
from __future__ import annotations

import importlib
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ModelError, WeightsError, described, shown
from ..registry import Registry
from .spec import ModelSpec

MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture")
ADAPTERS: Registry[Callable[..., nn.Module]] = Registry("model source")  # prefix before ':' in an arch reference


def make_spec(arch: str, in_channels: int, num_classes: int, kwargs: dict[str, Any] | None = None) -> ModelSpec:
    """The spec from which `build_model` rebuilds an architecture without pickle; an 'hf:' reference's config is
    recorded in it, so the rebuild needs no folder."""
    kwargs = dict(kwargs or {})
    if arch.startswith("hf:") and "config" not in kwargs:
        kwargs["config"] = hf.read_config(arch[3:])
    return ModelSpec(arch=arch, in_channels=in_channels, num_classes=num_classes, kwargs=kwargs)


def build_model(spec: ModelSpec) -> nn.Module:
    """Build an untrained model from a spec: a registered name, or a 'torchvision:', 'timm:', 'hf:', 'python:' reference,
    then each recorded transform (pruned shapes, dropped blocks, ...) in order."""
    arch, kwargs = spec.arch, spec.kwargs
    source, _, ref = arch.partition(":")
    builder = ADAPTERS.get(source) if ref else MODELS.get(arch)
    args = dict(kwargs, in_channels=spec.in_channels, num_classes=spec.num_classes)
    try:
        model = builder(ref, **args) if ref else builder(**args)
    except ModelError:
        raise
    except TypeError as e:
        raise ModelError(f"model {shown(arch)}: bad arguments {shown(kwargs, 200)}: {e}") from None
    except Exception as e:  # a builder (ours, a library's, the user's) rejects its arguments in its own way
        raise ModelError(f"model {shown(arch)} cannot be built with arguments {shown(kwargs, 200)}: {described(e)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {shown(arch)}: the builder returned {type(model).__name__}, not a torch.nn.Module")
    for transform in spec.transforms:
        model = transform.apply(model)
    return model


@ADAPTERS.register("python")
def python_model(ref: str, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    """'python:package.module:function' — runs the user's code (only use references you trust)."""
    where = f"model {shown('python:' + ref)}"
    module_name, _, fn_name = ref.partition(":")
    if not (module_name and fn_name):
        raise ModelError(f"{where}: expected 'python:module:function', e.g. 'python:mypackage.nets:small_cnn'")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ModelError(f"{where}: cannot import {fn_name[:80]} from {module_name[:80]}: {str(e)[:200]}") from None
    except Exception as e:  # importing runs the module's own code
        raise ModelError(f"{where}: importing {module_name[:80]} failed: {described(e)}") from None
    if not callable(fn):
        raise ModelError(f"{where}: {fn_name[:80]} is a {type(fn).__name__}, not a function that builds the model")
    return fn(in_channels=in_channels, num_classes=num_classes, **kwargs)


@ADAPTERS.register("torchvision")
def torchvision_model(name: str, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    """'torchvision:NAME' with random weights; input channels other than 3 are handled by a 1x1 adapter conv."""
    models = optional_import("torchvision.models", "vision")
    try:
        model = models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except ValueError as e:
        raise ModelError(f"model 'torchvision:{name}': {e}") from None
    return model if in_channels == 3 else nn.Sequential(nn.Conv2d(in_channels, 3, 1), model)


@ADAPTERS.register("timm")
def timm_model(name: str, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    """'timm:NAME' with random weights (no download)."""
    timm = optional_import("timm", "vision")
    try:
        return timm.create_model(name, pretrained=False, in_chans=in_channels, num_classes=num_classes, **kwargs)
    except RuntimeError as e:
        raise ModelError(f"model 'timm:{name}': {e}") from None


def optional_import(module: str, extra: str):
    """Import an optional package or explain how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(f"{module.split('.')[0]} is not installed; install it with: pip install 'compress[{extra}]'") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or from a torch file loaded with weights_only=True (pickled code refused)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found" if not path.exists() else
                           f"{path}: not a regular file; give a .safetensors or torch file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{path}: corrupt or unreadable safetensors file ({e})") from None
    with open(path, "rb") as f:
        header = f.read(2)
    if header == b"PK" and not zipfile.is_zipfile(path):  # torch's zip archive, cut short or damaged
        raise WeightsError(f"{path}: corrupt or unreadable torch file (not a complete zip archive); copy or save it again")
    if header != b"PK" and header[:1] != b"\x80":  # neither torch's zip archive nor a binary pickle
        raise WeightsError(f"{path}: not a safetensors or torch file ({'empty' if not header else 'unrecognised content'}); "
                           f"save the weights with safetensors or torch.save(model.state_dict())")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols; a failure is reported below
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path}: refused: the file holds pickled Python objects, which could run code when loaded "
            f"({unpickler_finding(e)}). Save plain tensors with safetensors or torch.save(model.state_dict())."
        ) from None
    except Exception as e:  # a damaged file fails anywhere in torch's readers, with many exception types
        raise WeightsError(f"{path}: corrupt or unreadable torch file ({first_line(e)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a mapping of parameter names to tensors (a state_dict)")
    return state


def unpickler_finding(error: Exception) -> str:
    """What torch's weights-only unpickler objected to, without its advice to turn the check off."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", str(error))
    return match.group(1) if match else first_line(error)


def first_line(error: Exception) -> str:
    """The first sentence of an error's text."""
    text = str(error).strip()
    return re.split(r"(?<=\.)\s|\n", text)[0] if text else "empty or truncated file"


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights into `model`, naming missing, unexpected and mis-shaped tensors on mismatch."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if items]
        raise WeightsError(f"{path}: weights do not match the model: " + "; ".join(parts))
    model.load_state_dict(state)
    return model


from . import cnn, hf, mamba, mobilenet, resnet  # noqa: E402,F401  (register the built-in architectures and hf:)
