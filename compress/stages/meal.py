"""`type: meal` — ensemble distillation after MEAL V2 (Shen & Savvides, 2020).

The incoming model (the student) learns the mean softmax of several teachers, given as weights files or trained inside
the stage and cached in its work folder, optionally with an output discriminator. Teachers are loaded, built and
checked before anything is trained.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import torch
from pydantic import Field, model_validator
from torch import nn

from ..checkpoint import load_model_dir, save_model_dir
from ..distributed import on_main
from ..config import Count, FilePath, Strict, sha256_json
from ..context import RunContext
from ..distill import Adversary, Discriminator, TeacherTargets, distillation_loss
from ..errors import ConfigError, ModelError, RunDirError, UnknownNameError
from ..models import build_model, load_weights, make_spec
from ..training import TrainConfig, Trainer, evaluate
from .base import Stage, StageConfig, StageResult, register_stage


class TeacherTraining(TrainConfig):
    """Teachers trained inside the stage with the shared loop (optimizer fields as in `type: train`)."""

    count: Count = Field(1, description="how many to train, each with its own seed")
    arch: str = Field(description="architecture of these teachers (as model.arch)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the architecture")


class TeacherConfig(Strict):
    """One `teachers` entry: `{stage: NAME}`, `{arch, weights, kwargs?}` or `{train: {count, arch, epochs, ...}}`."""

    stage: Optional[str] = Field(None, description="the model an earlier stage of this run produced (its name, or type when unnamed)")

    arch: Optional[str] = Field(None, description="architecture of a teacher loaded from `weights`")
    weights: Optional[FilePath] = Field(None, description="the teacher's .safetensors (or tensors-only .pt) file")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for `arch`")
    num_classes: Optional[Count] = Field(None, description="default: the student's")
    in_channels: Optional[Count] = Field(None, description="default: the student's")
    train: Optional[TeacherTraining] = Field(None, description="train teachers here instead of loading one")

    @model_validator(mode="after")
    def one_form(self) -> "TeacherConfig":
        from_file = self.arch is not None and self.weights is not None and not {"stage", "train"} & self.model_fields_set
        forms = [from_file, self.model_fields_set == {"train"}, self.model_fields_set == {"stage"}]
        if sum(forms) != 1:
            raise ValueError("expected one of {stage: NAME}, {arch, weights[, kwargs]} or {train: {count, arch, epochs, ...}}")
        return self


class DiscriminatorConfig(Strict):
    enabled: bool = Field(True, description="train an output discriminator and add its adversarial term")
    weight: float = Field(1.0, ge=0, description="weight of the adversarial term in the student's loss")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate of the discriminator")
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(default_factory=lambda: [64], description="hidden layer widths of the MLP")


@dataclasses.dataclass
class Teacher:
    """A built teacher; `job` is set while it still has to be trained (then cached in `folder`, if any)."""

    model: nn.Module
    spec: dict[str, Any]
    info: dict[str, Any]
    job: Optional[TeacherTraining] = None
    seed: int = 0
    folder: Optional[Path] = None


@register_stage
class MealStage(Stage):
    type = "meal"

    class Config(StageConfig, TrainConfig):
        type: Literal["meal"] = "meal"
        teachers: list[TeacherConfig] = Field(min_length=1, description="weights-file and/or trained teachers")
        temperature: float = Field(1.0, gt=0, description="softmax temperature of teachers and student")
        hard_label_weight: float = Field(0.0, ge=0, le=1, description="weight of cross-entropy to the labels (with "
                                         "label_smoothing); the soft term gets 1 - this")
        discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
        cache_targets: bool = Field(True, description="compute teacher targets once (only when data.augment is off)")

        def earlier_stages(self) -> dict[str, str]:
            return {f"teachers[{i}].stage": t.stage for i, t in enumerate(self.teachers) if t.stage is not None}

    def run(self, model: nn.Module, spec: dict[str, Any], ctx: RunContext) -> StageResult:
        cfg = self.config
        teachers = self.build_teachers(spec, ctx)
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
        adversary = Adversary(Discriminator(spec["num_classes"], disc.hidden), disc.lr, ctx.dist) if disc.enabled else None
        loss_fn = distillation_loss(targets, cfg.temperature, cfg.hard_label_weight, adversary=adversary,
                                    adversary_weight=disc.weight, label_smoothing=cfg.label_smoothing)
        history = Trainer(model, cfg, ctx, loss_fn=loss_fn, callbacks=[adversary] if adversary else []).fit()
        return StageResult(model=model, metrics={
            "history": history, "teachers": [t.info for t in teachers], "ensemble_val_accuracy": ensemble_accuracy,
            "teacher_targets_cached": cached, "teacher_seconds": targets.seconds,
        })

    def build_teachers(self, spec: dict[str, Any], ctx: RunContext) -> list[Teacher]:
        """Build, load and check every teacher before any training; cached trained ones come back ready."""
        teachers: list[Teacher] = []
        for i, entry in enumerate(self.config.teachers):
            if entry.stage is not None:
                teachers.append(stage_teacher(entry.stage, f"teachers[{i}]", ctx))
            elif entry.train is None:
                teachers.append(file_teacher(entry, spec, f"teachers[{i}]", ctx))
            else:
                teachers += [planned_teacher(entry.train, spec, 1000 * (ctx.seed + 1) + len(teachers) + k,
                                             f"teachers[{i}].train[{k}]", ctx) for k in range(entry.train.count)]
        for teacher in teachers:
            check_outputs(teacher, spec["num_classes"], ctx)
        return teachers


def file_teacher(entry: TeacherConfig, student_spec: dict[str, Any], name: str, ctx: RunContext) -> Teacher:
    """Build a teacher and load its weights file; errors name the teacher."""
    spec = make_spec(entry.arch, entry.in_channels or student_spec["in_channels"],
                     entry.num_classes or student_spec["num_classes"], entry.kwargs)
    try:
        model = load_weights(build_model(spec), entry.weights)
    except (ModelError, UnknownNameError) as e:  # WeightsError included
        raise type(e)(f"stage '{ctx.stage_name}': {name}: {e}") from None
    return Teacher(model, spec, {"name": name, "arch": entry.arch, "weights": str(entry.weights)})


def stage_teacher(label: str, name: str, ctx: RunContext) -> Teacher:
    """The model an earlier stage of this run saved (e.g. the unpruned one teaching its pruned copy)."""
    folder = ctx.earlier.get(label)
    if folder is None:
        finished = ", ".join(ctx.earlier) or "none"
        raise ConfigError(f"stage '{ctx.stage_name}': {name}.stage: no finished stage {label!r} in this run (finished: {finished})")
    model, spec, _ = load_model_dir(folder, ctx.device)
    return Teacher(model, spec, {"name": name, "arch": spec["arch"], "stage": label})


def planned_teacher(job: TeacherTraining, student_spec: dict[str, Any], seed: int, name: str, ctx: RunContext) -> Teacher:
    """A trained teacher from the stage's cache, or a freshly built one with its training still to do."""
    spec = make_spec(job.arch, student_spec["in_channels"], student_spec["num_classes"], job.kwargs)
    key = sha256_json({"train": job.model_dump(mode="json", exclude={"count"}), "spec": spec, "seed": seed,
                       "data": ctx.data_config.model_dump(mode="json")})
    folder = ctx.stage_dir / "teachers" / f"teacher-{key[:16]}" if ctx.stage_dir else None
    info = {"name": name, "arch": job.arch, "seed": seed}
    if folder is not None and folder.is_dir():
        try:
            model, _, metrics = load_model_dir(folder, ctx.device)
            return Teacher(model, spec, {**info, "reused": True, "train_seconds": metrics.get("train_seconds")}, folder=folder)
        except RunDirError as e:
            ctx.log(f"[{ctx.stage_name}] {name}: cached teacher in {folder} is unusable ({e}); training it again")
    torch.manual_seed(seed)
    try:
        model = build_model(spec)
    except (ModelError, UnknownNameError) as e:
        raise type(e)(f"stage '{ctx.stage_name}': {name}: {e}") from None
    return Teacher(model, spec, {**info, "reused": False}, job=job, seed=seed, folder=folder)


def train_teacher(teacher: Teacher, ctx: RunContext) -> None:
    """Train with the shared loop under the teacher's own seed, then cache it atomically in the stage's folder."""
    start = time.time()
    torch.manual_seed(teacher.seed)
    teacher_ctx = dataclasses.replace(ctx, seed=teacher.seed, stage_name=f"{ctx.stage_name} {teacher.info['name']}")
    history = Trainer(teacher.model, teacher.job, teacher_ctx).fit()
    teacher.info["train_seconds"] = time.time() - start
    if teacher.folder is not None:
        metrics = {"history": history, "train_seconds": teacher.info["train_seconds"]}
        on_main(ctx.dist, lambda: save_model_dir(teacher.folder, teacher.model, teacher.spec, metrics))
    teacher.job = None


def score_teachers(teachers: list[Teacher], temperature: float, ctx: RunContext) -> float:
    """Record each teacher's size and val accuracy; return the val accuracy of their mean softmax at `temperature`."""
    batch_size = ctx.data_config.eval_batch_size
    for teacher in teachers:
        teacher.info["params"] = sum(p.numel() for p in teacher.model.parameters())
        teacher.info["val_accuracy"] = evaluate(teacher.model, ctx.data.val, batch_size, ctx.device)["accuracy"]
    val = TeacherTargets([t.model for t in teachers], ctx.data.val, temperature, ctx.device, cache=True, batch_size=batch_size)
    return float((val.table.probs.argmax(1).cpu() == ctx.data.val.y).float().mean())


def check_outputs(teacher: Teacher, num_classes: int, ctx: RunContext) -> None:
    """A teacher must accept the student's inputs and predict the student's classes."""
    where = f"stage '{ctx.stage_name}': {teacher.info['name']} ({teacher.info['arch']})"
    model = teacher.model.to(ctx.device).eval()
    try:
        with torch.no_grad():
            out = model(ctx.data.val.x[:2].to(ctx.device))
    except RuntimeError as e:
        raise ModelError(f"{where}: cannot run on inputs of shape {tuple(ctx.data.input_shape)}: {str(e).splitlines()[0]}") from None
    classes = out.shape[1] if out.ndim == 2 else None
    if classes != num_classes:
        shown = f"{classes} classes" if classes else f"shape {tuple(out.shape[1:])}"
        raise ConfigError(f"{where}: outputs {shown} but the student has {num_classes} classes; "
                          f"every teacher must predict the student's classes")
