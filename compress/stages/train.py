"""`type: train` — train from scratch or fine-tune with the shared loop."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import TrainConfig
from .base import Stage, StageConfig, StageResult, register_stage


@register_stage
class TrainStage(Stage):
    type = "train"
    example = {"type": "train", "epochs": 2, "optimizer": "sgd", "lr": 0.1}

    class Config(StageConfig, TrainConfig):
        type: Literal["train"] = Field("train", description="the stage's registered name")

    def run(self, model, spec, ctx) -> StageResult:
        from ..training import Trainer

        history = Trainer(model, self.config, ctx).fit()
        return StageResult(model=model, metrics={"history": history})
