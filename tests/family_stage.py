"""A stage registered only by the test suite (import this module to register it): it hands on the incoming model as
its primary output and three models of other widths as variants, each trained with the shared loop, as a slicing or
progressive-distillation stage would."""
from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import Field

from compress.config import TrainConfig
from compress.stages.base import STAGES, Stage, StageConfig, StageResult, Variant, register_stage

WIDTHS = {"small": [4, 8], "medium": [8, 16], "large": [16, 32]}


class FamilyStage(Stage):
    type = "family"
    example = {"type": "family", "epochs": 1}

    class Config(StageConfig, TrainConfig):
        type: Literal["family"] = Field("family", description="the stage's registered name")

    def run(self, model, spec, ctx) -> StageResult:
        from compress.models import build_model, make_spec
        from compress.training import Trainer

        variants = {}
        for name, channels in WIDTHS.items():
            variant_spec = make_spec("cnn_s", spec.in_channels, spec.num_classes, {"channels": channels})
            variant = build_model(variant_spec)
            Trainer(variant, self.config, dataclasses.replace(ctx, stage_name=f"{ctx.stage_name} {name}")).fit()
            variants[name] = Variant(variant, variant_spec, {"channels": channels})
        return StageResult(model=model, metrics={"widths": WIDTHS}, variants=variants)


if "family" not in STAGES:
    register_stage(FamilyStage)
