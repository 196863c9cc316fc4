"""Stage base class, its result, and the stage registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from pydantic import Field

from ..config import Name, Strict
from ..registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from ..context import RunContext


class StageConfig(Strict):
    """Fields every stage entry has; each stage's `Config` extends it."""

    type: str = Field(description="the stage's registered name")
    name: Optional[Name] = Field(None, description="label in logs and the report; default: the type")

    def earlier_stages(self) -> dict[str, str]:
        """Earlier stages of the run whose output this stage reads: key path -> stage label."""
        return {}


def stage_label(config: StageConfig) -> str:
    """How logs, the report and other stages name a stage: its `name`, or its type."""
    return config.name or config.type


@dataclass
class StageResult:
    """What a stage hands on: the model, its rebuild spec if the architecture changed, metrics, and extra variants."""

    model: nn.Module
    spec: Optional[dict[str, Any]] = None  # None: the architecture is unchanged
    metrics: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, tuple[nn.Module, dict[str, Any]]] = field(default_factory=dict)  # name -> (model, spec)


class Stage:
    """One unit of work in a pipeline: a `type` name, a typed `Config`, and `run(model, ctx)`."""

    type: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    uses_target: ClassVar[bool] = False  # True when the result depends on the target profile

    def __init__(self, config: StageConfig):
        self.config = config

    def run(self, model: nn.Module, spec: dict[str, Any], ctx: RunContext) -> StageResult:
        """Transform `model` (built from `spec`); write only inside `ctx.stage_dir`."""
        raise NotImplementedError


STAGES: Registry[type[Stage]] = Registry("stage")


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: register a stage under its `type`."""
    STAGES.add(cls.type, cls)
    return cls
