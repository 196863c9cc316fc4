"""Stage base class, its result, and the stage registry. Stage modules import torch and the methods they use inside
`check` and `run`, so that a pipeline file is validated without importing torch."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from pydantic import Field

from ..config import Name, Strict
from ..registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from ..context import RunContext
    from ..models import ModelSpec


class StageConfig(Strict):
    """Fields every stage entry has; each stage's `Config` extends it."""

    type: str = Field(description="the stage's registered name")
    name: Optional[Name] = Field(None, description="label in logs and the report; default: the type")

    def earlier_stages(self) -> dict[str, str]:
        """Earlier stages of the run whose output this stage reads: key path -> stage label."""
        return {}


@dataclass
class Variant:
    """A model a stage hands on besides its primary one: a sub-network, an assembled model, a student."""

    model: nn.Module
    spec: ModelSpec
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageResult:
    """What a stage hands on: the primary model, its rebuild spec if the architecture changed, metrics, and the other
    models of its family by name (each checkpointed, reported and exportable like the primary one)."""

    model: nn.Module
    spec: Optional[ModelSpec] = None  # None: the architecture is unchanged
    metrics: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, Variant] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # aux-NAME.json|safetensors -> bytes, saved in the stage folder


class Stage:
    """One unit of work in a pipeline: a `type` name, a typed `Config`, `check` before any stage runs, and `run`."""

    type: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    example: ClassVar[dict[str, Any]]  # a small working entry: the README's example and the contract test's stage
    variant_per_target: ClassVar[bool] = False  # True: given several targets, it makes a variant for each
    needs: ClassVar[Optional[str]] = None  # the type of an earlier stage whose output this one reads

    def __init__(self, config: StageConfig):
        self.config = config

    @property
    def label(self) -> str:
        """How logs, the report and other stages name it: its `name`, or its type."""
        return self.config.name or self.config.type

    def target_dependence(self) -> Optional[str]:
        """Why the result depends on the target profile (it then enters the resume hash), or None when it does not."""
        return None

    def check(self, model: nn.Module, spec: ModelSpec, ctx: RunContext) -> None:
        """Raise a CompressError for a setting that cannot work with the model the run starts from, the data or the
        target; called for every stage before the first one trains."""

    def run(self, model: nn.Module, spec: ModelSpec, ctx: RunContext) -> StageResult:
        """Transform `model` (built from `spec`); write only inside `ctx.stage_dir`."""
        raise NotImplementedError


STAGES: Registry[type[Stage]] = Registry("stage")


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: register a stage under its `type`."""
    STAGES.add(cls.type, cls)
    return cls
