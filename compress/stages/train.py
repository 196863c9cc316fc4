"""`type: train` — train from scratch or fine-tune with the shared loop."""
from __future__ import annotations

from typing import Any, Literal

from torch import nn

from ..context import RunContext
from ..training import TrainConfig, Trainer
from .base import Stage, StageConfig, StageResult, register_stage


@register_stage
class TrainStage(Stage):
    type = "train"

    class Config(StageConfig, TrainConfig):
        type: Literal["train"] = "train"

    def run(self, model: nn.Module, spec: dict[str, Any], ctx: RunContext) -> StageResult:
        history = Trainer(model, self.config, ctx).fit()
        return StageResult(model=model, metrics={"history": history})
