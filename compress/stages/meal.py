"""`type: meal` — ensemble distillation after MEAL V2 (Shen & Savvides, 2020).

The incoming model (the student) learns the mean softmax of several teachers, given as earlier stages, weights files
or trained inside the stage and cached in its work folder, optionally with an output discriminator. Teachers are
loaded, built and checked before anything is trained.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config import TrainConfig
from ..methods.distill.config import DiscriminatorConfig, TeacherConfig
from .base import Stage, StageConfig, StageResult, register_stage


@register_stage
class MealStage(Stage):
    type = "meal"
    example = {"type": "meal", "teachers": [{"stage": "train"}, {"train": {"count": 1, "arch": "resnet_s", "epochs": 3}}],
               "temperature": 1.0, "discriminator": {"enabled": True}, "epochs": 3}

    class Config(StageConfig, TrainConfig):
        type: Literal["meal"] = Field("meal", description="the stage's registered name")
        teachers: list[TeacherConfig] = Field(min_length=1, description="earlier stages, weights files and/or teachers "
                                                                        "trained here")
        temperature: float = Field(1.0, gt=0, le=1000, description="softmax temperature of teachers and student")
        hard_label_weight: float = Field(0.0, ge=0, le=1, description="weight of cross-entropy to the labels (with "
                                         "label_smoothing); the soft term gets 1 - this")
        discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig, description="the output discriminator")
        cache_targets: bool = Field(True, description="compute teacher targets once (only when data.augment is off)")

        def earlier_stages(self) -> dict[str, str]:
            return {f"teachers[{i}].stage": t.stage for i, t in enumerate(self.teachers) if t.stage is not None}

    def check(self, model, spec, ctx) -> None:
        from ..methods.distill.teachers import check_outputs, file_teacher

        for i, entry in enumerate(self.config.teachers):
            if entry.arch is not None:  # weights exist, match their architecture and predict the student's classes
                check_outputs(file_teacher(entry, spec, f"teachers[{i}]", ctx), spec.num_classes, ctx)

    def run(self, model, spec, ctx) -> StageResult:
        import torch

        from ..methods.distill.adversary import Adversary, Discriminator
        from ..methods.distill.losses import TeacherTargets, distillation_loss
        from ..methods.distill.teachers import build_teachers, score_teachers, train_teacher
        from ..training import Trainer

        cfg = self.config
        teachers = build_teachers(cfg.teachers, spec, ctx)
        for teacher in teachers:
            if teacher.job is not None:
                train_teacher(teacher, ctx)
        ensemble_accuracy = score_teachers(teachers, cfg.temperature, ctx)
        ctx.log(f"[{ctx.stage_name}] {len(teachers)} teacher(s), ensemble val_acc {ensemble_accuracy:.2%}")

        cached = cfg.cache_targets and not ctx.data_config.augment
        targets = TeacherTargets([t.model for t in teachers], ctx.data.train, cfg.temperature, ctx.device, cache=cached,
                                 batch_size=ctx.data_config.eval_batch_size)
        torch.manual_seed(ctx.seed)  # the student's run is the same whether teachers were trained just now or reused
        disc = cfg.discriminator
        adversary = Adversary(Discriminator(spec.num_classes, disc.hidden), disc.lr, ctx.dist) if disc.enabled else None
        loss_fn = distillation_loss(targets, cfg.temperature, cfg.hard_label_weight, adversary=adversary,
                                    adversary_weight=disc.weight, label_smoothing=cfg.label_smoothing)
        history = Trainer(model, cfg, ctx, loss_fn=loss_fn, callbacks=[adversary] if adversary else []).fit()
        return StageResult(model=model, metrics={
            "history": history, "teachers": [t.info for t in teachers], "ensemble_val_accuracy": ensemble_accuracy,
            "teacher_targets_cached": cached, "teacher_seconds": targets.seconds,
        })
