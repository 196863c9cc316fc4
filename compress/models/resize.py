"""Rebuild structurally pruned models without pickle: a `resize` transform maps module names to new shape attributes
(channels, groups, features; a LayerNorm's last dimension; the length of a module's own 1-D parameters, such as
ConvNeXt's layer scale)."""
from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ..errors import ModelError

SHAPE_ATTRS: dict[type, tuple[str, ...]] = {
    _ConvNd: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    _BatchNorm: ("num_features",),
    nn.GroupNorm: ("num_groups", "num_channels"),
    nn.LayerNorm: ("normalized_shape",),  # recorded as its last dimension
}


def layer_attrs(module: nn.Module) -> tuple[str, ...]:
    """The shape attributes of a resizable layer type; () for any other module."""
    return next((attrs for cls, attrs in SHAPE_ATTRS.items() if isinstance(module, cls)), ())


def attrs_of(module: nn.Module) -> tuple[str, ...]:
    """The shape attributes of a module: a resizable layer's, else the names of its own 1-D parameters."""
    return layer_attrs(module) or tuple(n for n, p in module.named_parameters(recurse=False) if p.dim() == 1)


def read_attr(module: nn.Module, attr: str) -> int:
    """One shape attribute as an int: a parameter's length, a LayerNorm's last dimension, or the attribute itself."""
    value = getattr(module, attr)
    if isinstance(value, nn.Parameter):
        return value.shape[0]
    return value[-1] if attr == "normalized_shape" else value


def shape_attrs(model: nn.Module) -> dict[str, dict[str, int]]:
    """{module name: {attribute: value}} for every module of `model` with shape attributes."""
    return {name: {a: read_attr(m, a) for a in attrs_of(m)} for name, m in model.named_modules() if attrs_of(m)}


def out_width(attrs: dict[str, int]) -> int:
    """A layer's output width from its `shape_attrs` record (channels or features)."""
    return attrs.get("out_channels", attrs.get("out_features", attrs.get("num_features", attrs.get("num_channels", 0))))


def resize_changes(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The entries of `after` (from `shape_attrs`) that differ from `before`."""
    return {name: attrs for name, attrs in after.items() if before.get(name) != attrs}


def tensor_shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape each parameter and buffer of a resizable module must have, given its shape attributes."""
    if isinstance(m, _ConvNd):
        io = (m.in_channels, m.out_channels // m.groups) if m.transposed else (m.out_channels, m.in_channels // m.groups)
        return {"weight": (*io, *m.kernel_size), "bias": (m.out_channels,)}
    if isinstance(m, nn.Linear):
        return {"weight": (m.out_features, m.in_features), "bias": (m.out_features,)}
    if isinstance(m, nn.LayerNorm):
        return {"weight": m.normalized_shape, "bias": m.normalized_shape}
    n = m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features
    return {key: (n,) for key in ("weight", "bias", "running_mean", "running_var")}


def apply_resize(model: nn.Module, resize: dict[str, dict[str, Any]]) -> nn.Module:
    """Give the named modules their recorded shapes (freshly initialised; load weights afterwards)."""
    for name, attrs in resize.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise ModelError(f"spec resize: the model has no module {name!r}") from None
        unknown = set(attrs) - set(attrs_of(m))
        if unknown:
            raise ModelError(f"spec resize: module {name!r} ({type(m).__name__}) has no resizable attribute(s) {sorted(unknown)}")
        if not layer_attrs(m):  # a module's own parameters: filled with their first value until weights load
            for attr, value in attrs.items():
                setattr(m, attr, nn.Parameter(getattr(m, attr).detach()[:1].expand(value).clone()))
            continue
        for attr, value in attrs.items():
            setattr(m, attr, (*m.normalized_shape[:-1], value) if attr == "normalized_shape" else value)
        for key, shape in tensor_shapes(m).items():
            t = getattr(m, key, None)
            if t is not None:
                setattr(m, key, nn.Parameter(t.new_empty(shape), t.requires_grad) if isinstance(t, nn.Parameter) else t.new_empty(shape))
        m.reset_parameters()
    return model


def remove_modules(model: nn.Module, names: list[str]) -> nn.Module:
    """Replace the named submodules with the identity (blocks removed by depth pruning)."""
    for name in names:
        parent, _, child = name.rpartition(".")
        try:
            owner = model.get_submodule(parent)
            owner.get_submodule(child)
        except AttributeError:
            raise ModelError(f"spec dropped: the model has no module {name!r}") from None
        setattr(owner, child, nn.Identity())
    return model
