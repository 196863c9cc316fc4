"""Teachers for any distillation stage: the model of an earlier stage (`{stage: NAME}`), a weights file, or models
trained in the stage with the shared loop and cached in its work folder, so a resumed run does not train them again."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ...checkpoint import load_model_dir, save_model_dir
from ...config import sha256_json
from ...context import RunContext
from ...distributed import on_main
from ...errors import ConfigError, ModelError, RunDirError, UnknownNameError, described, shown
from ...models import ModelSpec, build_model, load_weights, make_spec
from ...models.hf import initial_weights
from ...training import Trainer, evaluate
from .config import TeacherConfig, TeacherTraining
from .losses import TeacherTargets


@dataclasses.dataclass
class Teacher:
    """A built teacher; `job` is set while it still has to be trained (then cached in `folder`, if any)."""

    model: nn.Module
    spec: ModelSpec
    info: dict[str, Any]
    job: Optional[TeacherTraining] = None
    seed: int = 0
    folder: Optional[Path] = None


def build_teachers(entries: list[TeacherConfig], spec: ModelSpec, ctx: RunContext) -> list[Teacher]:
    """Build, load and check every teacher of `entries` for a student of `spec` before any training; cached trained
    ones come back ready, others carry the training still to do (`train_teacher`)."""
    teachers: list[Teacher] = []
    for i, entry in enumerate(entries):
        if entry.stage is not None:
            teachers.append(stage_teacher(entry.stage, f"teachers[{i}]", ctx))
        elif entry.train is None:
            teachers.append(file_teacher(entry, spec, f"teachers[{i}]", ctx))
        else:
            teachers += [planned_teacher(entry.train, spec, 1000 * (ctx.seed + 1) + len(teachers) + k,
                                         f"teachers[{i}].train[{k}]", ctx) for k in range(entry.train.count)]
    for teacher in teachers:
        check_outputs(teacher, spec.num_classes, ctx)
    return teachers


def file_teacher(entry: TeacherConfig, student_spec: ModelSpec, name: str, ctx: RunContext) -> Teacher:
    """Build a teacher and load its weights file; errors name the teacher."""
    spec = make_spec(entry.arch, entry.in_channels or student_spec.in_channels,
                     entry.num_classes or student_spec.num_classes, entry.kwargs)
    try:
        weights = entry.weights or initial_weights(entry.arch)
        if weights is None:
            raise ModelError(f"{shown(entry.arch)} brings no weights: give the teacher's weights")
        model = load_weights(build_model(spec), weights)
    except (ModelError, UnknownNameError) as e:  # WeightsError included
        raise type(e)(f"stage '{ctx.stage_name}': {name}: {e}") from None
    return Teacher(model, spec, {"name": name, "arch": entry.arch, "weights": str(weights)})


def stage_teacher(label: str, name: str, ctx: RunContext) -> Teacher:
    """The model an earlier stage of this run saved (e.g. the unpruned one teaching its pruned copy)."""
    folder = ctx.earlier.get(label)
    if folder is None:
        finished = ", ".join(ctx.earlier) or "none"
        raise ConfigError(f"stage '{ctx.stage_name}': {name}.stage: no finished stage {label!r} in this run (finished: {finished})")
    model, spec, _ = load_model_dir(folder, ctx.device)
    return Teacher(model, spec, {"name": name, "arch": spec.arch, "stage": label})


def planned_teacher(job: TeacherTraining, student_spec: ModelSpec, seed: int, name: str, ctx: RunContext) -> Teacher:
    """A trained teacher from the stage's cache, or a freshly built one with its training still to do."""
    spec = make_spec(job.arch, student_spec.in_channels, student_spec.num_classes, job.kwargs)
    key = sha256_json({"train": job.model_dump(mode="json", exclude={"count"}), "spec": spec.model_dump(mode="json"),
                       "seed": seed, "data": ctx.data_config.model_dump(mode="json")})
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
        raise ModelError(f"{where}: cannot run on inputs of shape {tuple(ctx.data.input_shape)}: {described(e)}") from None
    classes = out.shape[1] if out.ndim == 2 else None
    if classes != num_classes:
        shown = f"{classes} classes" if classes else f"shape {tuple(out.shape[1:])}"
        raise ConfigError(f"{where}: outputs {shown} but the student has {num_classes} classes; "
                          f"every teacher must predict the student's classes")
