"""Benchmark of `type: meal` on Fashion-MNIST; writes the `meal` section of docs/benchmarks.md.

Rows (same student, epochs and optimiser; one run per seed): cross-entropy only; single-teacher KD (teacher 0, the
meal loss with one teacher); MEAL with all teachers, without and with the discriminator. Every student starts from the
same random initialisation for a given seed; the seed sets initialisation and batch order. The teachers are trained once
(with augmentation, by the stage's own teacher code), cached in the work folder and shared by every row and seed.
Finished runs are cached too, so an interrupted benchmark resumes; a change of settings starts afresh (delete the
work folder after changing the code).

    python bench/meal.py --data-root ../shared/data/fashion-mnist                     # full scale
    python bench/meal.py --dataset bundled --limit 600 --epochs 1 --teacher-epochs 1 \\
        --seeds 0 1 --out /tmp/meal.md --work-dir /tmp/meal-bench                     # smoke test
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from common import bench_parser, command_line, machine_line, write_section
from compress.atomic import atomic_write, to_json
from compress.config import DataConfig, sha256_json
from compress.context import RunContext
from compress.data import load_data
from compress.methods.distill.losses import TeacherTargets
from compress.models import build_model, make_spec
from compress.pipeline import seed_everything
from compress.methods.distill.config import TeacherConfig, TeacherTraining
from compress.methods.distill.teachers import file_teacher, planned_teacher, train_teacher
from compress.stages.meal import MealStage
from compress.stages.train import TrainStage
from compress.training import evaluate

STUDENT = {"arch": "cnn_s", "kwargs": {"channels": [16, 32, 64]}}
TEACHER = {"arch": "resnet_s", "kwargs": {}}


def parse_args(argv=None) -> argparse.Namespace:
    p = bench_parser(__doc__)
    p.add_argument("--epochs", type=int, default=10, help="student epochs, every row")
    p.add_argument("--teacher-epochs", type=int, default=15)
    p.add_argument("--teachers", type=int, default=3, help="ensemble size of the MEAL rows")
    p.add_argument("--lr", type=float, default=0.05, help="student SGD learning rate, every row (cosine schedule)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench-meal"), help="teacher and run cache")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="markdown file whose meal section is replaced")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def rows(teachers: list[dict]) -> dict[str, dict]:
    """Row label -> stage config (besides the shared optimisation settings)."""
    no_disc = {"enabled": False}
    return {
        "cross-entropy only": {"type": "train"},
        "single-teacher KD": {"type": "meal", "teachers": teachers[:1], "discriminator": no_disc},
        f"MEAL, {len(teachers)} teachers, no discriminator": {"type": "meal", "teachers": teachers, "discriminator": no_disc},
        f"MEAL, {len(teachers)} teachers, with discriminator": {"type": "meal", "teachers": teachers},
    }


def train_teachers(args, data, data_cfg: DataConfig, spec: dict) -> list[dict]:
    """Train (or reuse) the teachers with augmentation; return them as `teachers` entries of weights files."""
    ctx = RunContext(data=data, data_config=data_cfg.model_copy(update={"augment": True}), device=torch.device(args.device),
                     quiet=args.quiet, stage_name="teacher", stage_dir=args.work_dir)
    job = TeacherTraining(arch=TEACHER["arch"], kwargs=TEACHER["kwargs"], epochs=args.teacher_epochs)
    entries = []
    for j in range(args.teachers):
        teacher = planned_teacher(job, spec, seed=100 + j, name=f"teacher {j}", ctx=ctx)
        if teacher.job is not None:
            train_teacher(teacher, ctx)
        entries.append({**TEACHER, "weights": str(teacher.folder / "weights.safetensors")})
    return entries


def run_one(stage_cfg: dict, seed: int, args, data, data_cfg: DataConfig, spec: dict) -> dict:
    """Distil or train one student from its seed's initialisation; cached by settings in the work folder."""
    train = {"epochs": args.epochs, "lr": args.lr}
    key = sha256_json({"stage": stage_cfg, "train": train, "seed": seed, "spec": spec, "data": data_cfg.model_dump(mode="json"),
                       "device": args.device})
    done = args.work_dir / "runs" / f"{key[:20]}.json"
    if done.is_file():
        return json.loads(done.read_text())
    stage_class = TrainStage if stage_cfg["type"] == "train" else MealStage
    config = stage_class.Config.model_validate({**stage_cfg, **train})
    seed_everything(seed)
    student = build_model(spec)
    ctx = RunContext(data=data, data_config=data_cfg, device=torch.device(args.device), seed=seed, quiet=args.quiet,
                     stage_name=stage_cfg["type"], stage_dir=args.work_dir / "stage" / key[:20])
    start = time.perf_counter()
    result = stage_class(config).run(student, spec, ctx)
    seconds = time.perf_counter() - start
    record = {"seconds": seconds, "val_accuracy": evaluate(result.model, data.val, 512, args.device)["accuracy"],
              "test_accuracy": evaluate(result.model, data.test, 512, args.device)["accuracy"],
              "teacher_seconds": result.metrics.get("teacher_seconds"), "history": result.metrics["history"]}
    atomic_write(done, to_json(record))
    return record


def teacher_accuracies(teachers: list[dict], data, spec: dict, ctx: RunContext) -> tuple[list[float], float]:
    """Test accuracy of each teacher and of their mean softmax."""
    models = [file_teacher(TeacherConfig(**t), spec, f"teacher {j}", ctx).model for j, t in enumerate(teachers)]
    each = [evaluate(m, data.test, 512, ctx.device)["accuracy"] for m in models]
    ensemble = TeacherTargets(models, data.test, 1.0, ctx.device, cache=True).table.probs.argmax(1).cpu()
    return each, float((ensemble == data.test.y).float().mean())


def points(values: list[float]) -> str:
    """'mean ± sample std' in percent."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def compared(gap: float, spread: float) -> str:
    """A gap in words against the seed spread."""
    if abs(gap) <= spread:
        return "within the seed spread"
    return "clearly ahead" if gap > 0 else "clearly behind"


def verdicts(results: dict[str, list[dict]]) -> list[str]:
    """How far each MEAL row is ahead of the baselines, compared with the seeds' spread, and what the discriminator adds."""
    test = {row: [r["test_accuracy"] for r in runs] for row, runs in results.items()}
    mean = {row: statistics.mean(v) for row, v in test.items()}
    std = {row: statistics.stdev(v) if len(v) > 1 else 0.0 for row, v in test.items()}
    ce, kd, *meal = test
    lines = []
    for row in meal:
        for base in (ce, kd):
            gap, spread = mean[row] - mean[base], std[row] + std[base]
            lines.append(f"- {row} vs {base}: {100 * gap:+.2f} points, {compared(gap, spread)} "
                         f"(seed spread {100 * spread:.2f} = sum of both std)")
    gap = mean[meal[1]] - mean[meal[0]]
    lines.append(f"- discriminator: {100 * gap:+.2f} points with it: {compared(gap, std[meal[0]] + std[meal[1]])}")
    return lines


def markdown(args, data, spec: dict, results: dict[str, list[dict]], teacher_acc: tuple[list[float], float], cache: dict) -> str:
    each, ensemble = teacher_acc
    params = lambda model: f"{sum(p.numel() for p in model.parameters()):,}"  # noqa: E731
    teacher = build_model(make_spec(TEACHER["arch"], spec["in_channels"], spec["num_classes"], TEACHER["kwargs"]))
    lines = [
        "## MEAL ensemble distillation (`type: meal`)", "",
        f"Dataset {args.dataset}{f' (limit {args.limit})' if args.limit else ''}: "
        f"{len(data.train):,} train / {len(data.val):,} val / {len(data.test):,} test. "
        f"Student {STUDENT['arch']} {STUDENT['kwargs']} ({params(build_model(spec))} params), trained from scratch for "
        f"{args.epochs} epochs in every row (SGD, lr {args.lr}, cosine, batch {args.batch_size}, no augmentation). "
        f"Teachers: {args.teachers} x {TEACHER['arch']} ({params(teacher)} params), {args.teacher_epochs} epochs with augmentation. "
        f"Loss: KL to the teachers' mean softmax, temperature 1, no hard labels. Seeds {', '.join(map(str, args.seeds))}; "
        "accuracy is mean ± sample standard deviation over seeds, in percent.", "",
        "| row | test accuracy | val accuracy | test accuracy per seed | seconds per run |", "|---|---|---|---|---|",
    ]
    for row, runs in results.items():
        test, val = [r["test_accuracy"] for r in runs], [r["val_accuracy"] for r in runs]
        per_seed = ", ".join(f"{100 * a:.2f}" for a in test)
        seconds = statistics.mean(r["seconds"] for r in runs)
        lines.append(f"| {row} | {points(test)} | {points(val)} | {per_seed} | {seconds:.1f} |")
    lines += [
        "", f"Teachers' test accuracy: {', '.join(f'{100 * a:.2f}' for a in each)}; "
        f"their ensemble (mean softmax): {100 * ensemble:.2f}.", "",
        f"Teacher-target cache (MEAL without discriminator, seed {args.seeds[0]}): the teachers ran for "
        f"{cache['cached']['teacher_seconds']:.1f} s with the cache (one pass over the training split) vs "
        f"{cache['live']['teacher_seconds']:.1f} s without it (one pass per epoch); the whole stage took "
        f"{cache['cached']['seconds']:.1f} s vs {cache['live']['seconds']:.1f} s.", "",
        "Findings (test accuracy; 'clearly' means the gap exceeds the sum of both rows' standard deviations):", *verdicts(results), "",
        machine_line(command_line()) + f" Device {args.device}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    data_cfg = DataConfig(dataset=args.dataset, root=args.data_root, limit=args.limit, batch_size=args.batch_size)
    data = load_data(data_cfg, seed=0)
    if data.test is None:
        raise SystemExit(f"dataset {args.dataset} has no test split")
    spec = make_spec(STUDENT["arch"], data.in_channels, data.num_classes, STUDENT["kwargs"])
    teachers = train_teachers(args, data, data_cfg, spec)
    table = rows(teachers)
    results = {row: [run_one(cfg, seed, args, data, data_cfg, spec) for seed in args.seeds] for row, cfg in table.items()}
    meal = list(table)[2]  # without the discriminator: the cache's saving alone
    live = run_one({**table[meal], "cache_targets": False}, args.seeds[0], args, data, data_cfg, spec)
    cache = {"cached": results[meal][0], "live": live}
    ctx = RunContext(data=data, data_config=data_cfg, device=torch.device(args.device), stage_name="bench")
    section = markdown(args, data, spec, results, teacher_accuracies(teachers, data, spec, ctx), cache)
    print(write_section(args.out, "meal", section))


if __name__ == "__main__":
    main()
