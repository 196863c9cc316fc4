"""The typed model spec: what rebuilds a model without pickle. An architecture reference, then the transforms stages
recorded (resized modules, dropped blocks, ...) in order, each with its own rebuild step, and marks such as an N:M
sparsity pattern. A new transform is one class here, added to `Transform`."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, ValidationError
from torch import nn

from ..config import Count, Natural, Strict, error_lines
from .resize import apply_resize, remove_modules

SPEC_VERSION = 2  # 1: the untyped dict of compress 0.1 (arch, kwargs, resize, dropped, sparsity_pattern, ...)


class Resize(Strict):
    """Modules given new shapes by structured pruning: module name -> shape attributes (channels, groups, features)."""

    kind: Literal["resize"] = "resize"
    modules: dict[str, dict[str, Natural]]

    def apply(self, model: nn.Module) -> nn.Module:
        return apply_resize(model, self.modules)


class Drop(Strict):
    """Blocks removed by depth pruning: each becomes the identity."""

    kind: Literal["drop"] = "drop"
    modules: list[str]

    def apply(self, model: nn.Module) -> nn.Module:
        return remove_modules(model, self.modules)


Transform = Annotated[Union[Resize, Drop], Field(discriminator="kind")]


class Sparsity(Strict):
    """An N:M pattern (e.g. 2:4) the named layers hold, for runtimes with sparse kernels; export checks it again on
    the final weights."""

    pattern: str
    layers: list[str]

    @property
    def nm(self) -> tuple[int, int]:
        n, m = self.pattern.split(":")
        return int(n), int(m)


class ModelSpec(Strict):
    """Architecture, arguments and recorded transforms of one model; `models.build_model` turns it into a module."""

    version: Literal[2] = SPEC_VERSION
    arch: str
    in_channels: Count
    num_classes: Count
    kwargs: dict[str, Any] = Field(default_factory=dict)
    transforms: list[Transform] = Field(default_factory=list)
    sparsity: Optional[Sparsity] = None
    classes: Optional[list[Natural]] = Field(None, description="the dataset classes the head predicts, in output order "
                                             "(an assembled model for a class subset); None: all num_classes")

    def then(self, *transforms: Union[Resize, Drop]) -> "ModelSpec":
        """This spec with `transforms` recorded after the others (empty ones skipped); a structural change drops the
        sparsity mark, which named the old layers."""
        kept = [t for t in transforms if t.modules]
        return self.model_copy(update={"transforms": [*self.transforms, *kept], "sparsity": None if kept else self.sparsity})

    def for_classes(self, classes: list[int]) -> "ModelSpec":
        """This spec for a head cut down to `classes` (indices into the classes the head predicts now)."""
        now = self.classes or list(range(self.num_classes))
        return self.model_copy(update={"classes": [now[c] for c in classes]})

    def marked(self, sparsity: Optional[Sparsity]) -> "ModelSpec":
        return self.model_copy(update={"sparsity": sparsity})

    @classmethod
    def from_json(cls, data: Any) -> "ModelSpec":
        """Validate a spec read from spec.json; a version-1 dict is converted. Raises ValueError naming the problem."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        version = data.get("version", 1)
        if version == 1:
            data = upgraded(data)
        elif version != SPEC_VERSION:
            raise ValueError(f"spec version {version!r} is not one this compress reads ({SPEC_VERSION}, or 1 without a "
                             f"version); it was written by another version of compress")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ValueError("; ".join(error_lines(e))) from None


def upgraded(old: dict) -> dict:
    """A version-1 spec dict (`resize`, `dropped`, `sparsity_pattern`, `sparse_layers` keys) as version 2."""
    data = {k: old[k] for k in ("arch", "in_channels", "num_classes", "kwargs") if k in old}
    data["transforms"] = ([{"kind": "resize", "modules": old["resize"]}] if old.get("resize") else []) + \
                         ([{"kind": "drop", "modules": old["dropped"]}] if old.get("dropped") else [])
    if old.get("sparsity_pattern"):
        data["sparsity"] = {"pattern": old["sparsity_pattern"], "layers": old.get("sparse_layers", [])}
    return data
