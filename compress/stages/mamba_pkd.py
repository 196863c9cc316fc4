"""`type: mamba_pkd` — progressive distillation of the incoming model (the teacher, any architecture) into a chain of
ever smaller Mamba students (`mamba_s`), which also act together as an ensemble (`mamba_ensemble`). Every student is
exported with the export-form scan and timed with ONNX Runtime here; the students and the chosen ensemble are the
stage's family, and `select` picks the primary model. Mechanics: `methods/distill/chain.py`, `methods/measure.py`."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag

from ..config import TrainConfig
from ..errors import ConfigError
from ..methods.distill.config import EnsembleConfig, SelectConfig, StudentCount, StudentSize
from .base import Stage, StageConfig, StageResult, Variant, register_stage

SMOKE_STUDENTS = [{"d_model": 8, "n_layers": 1, "d_state": 2, "expand": 1, "patch": 7},
                  {"d_model": 4, "n_layers": 1, "d_state": 2, "expand": 1, "patch": 7}]


@register_stage
class MambaPkdStage(Stage):
    type = "mamba_pkd"
    example = {"type": "mamba_pkd",
               "students": [{"d_model": 64, "n_layers": 4, "d_state": 16, "expand": 2, "patch": 4},
                            {"d_model": 32, "n_layers": 2, "d_state": 8, "expand": 2, "patch": 4},
                            {"d_model": 16, "n_layers": 1, "d_state": 4, "expand": 2, "patch": 7}],
               "chain": "progressive", "alpha": 0.5, "temperature": 4.0, "scan": "parallel", "epochs": 3,
               "select": {"smallest_within": 1.0}}

    class Config(StageConfig, TrainConfig):
        type: Literal["mamba_pkd"] = Field("mamba_pkd", description="the stage's registered name")
        students: Annotated[Union[Annotated[list[StudentSize], Field(min_length=1, max_length=8), Tag("list")],
                                  Annotated[StudentCount, Tag("count")]],
                            Discriminator(lambda v: "list" if isinstance(v, list) else "count")] = Field(
            description="the chain, largest first: a list of sizes, or {count, shrink, first}",
            json_schema_extra={"smoke": SMOKE_STUDENTS})
        chain: Literal["progressive", "teacher"] = Field("progressive", description="progressive: student k learns from "
                                                         "student k-1, the first from the teacher; teacher: all from the teacher")
        alpha: float = Field(0.5, ge=0, le=1, description="weight of cross-entropy to the labels; the T^2 KL term gets 1 - alpha")
        temperature: float = Field(4.0, gt=0, le=1000, description="softmax temperature of the soft targets")
        scan: Literal["sequential", "parallel"] = Field("parallel", description="selective scan used in training; "
                                                        "export always uses the export form")
        ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig, description="the students as an ensemble")
        select: SelectConfig = Field(default_factory=lambda: SelectConfig(smallest_within=1.0),
                                     description="how the primary model is chosen from the family")
        latency_batch_sizes: list[Annotated[int, Field(ge=1, le=65536)]] = Field([1, 32], min_length=1, description="batch sizes each student's ONNX file "
                                               "is timed at with ONNX Runtime here", json_schema_extra={"smoke": [1]})
        latency_runs: int = Field(20, ge=1, le=100_000, description="timed runs per batch size", json_schema_extra={"smoke": 2})
        optimizer: Literal["sgd", "adam", "adamw"] = Field("adamw", description="sgd (Nesterov momentum), adam or adamw")
        lr: float = Field(3e-3, gt=0, description="peak learning rate")
        weight_decay: float = Field(0.01, ge=0, description="applied to weight matrices/kernels, not to biases or norms")

        def sizes(self) -> list[StudentSize]:
            return self.students.sizes() if isinstance(self.students, StudentCount) else list(self.students)

    def target_dependence(self) -> Optional[str]:
        if self.config.select.budget is not None:
            return "select.budget: the target's latency budget chooses the primary model"
        if self.config.ensemble.latency_ms is not None:
            return "ensemble.latency_ms: the target's cost model chooses the ensemble"
        return None

    def check(self, model, spec, ctx) -> None:
        from ..metrics import count_macs
        from ..models import build_model

        where, shape = f"stage '{ctx.stage_name}'", ctx.data.input_shape
        if len(shape) != 3:
            raise ConfigError(f"{where}: Mamba students read images (C, H, W); the data's inputs have shape {tuple(shape)}")
        if spec.num_classes != ctx.data.num_classes:
            raise ConfigError(f"{where}: the teacher predicts {spec.num_classes} classes and the dataset has "
                              f"{ctx.data.num_classes}; the students learn the dataset's classes from the teacher, so "
                              f"both must agree (remove model.num_classes)")
        for i, size in enumerate(self.config.sizes()):
            if shape[1] % size.patch or shape[2] % size.patch:
                raise ConfigError(f"{where}: students[{i}].patch: {size.patch} does not divide the {shape[1]}x{shape[2]} "
                                  f"images; use a divisor such as {', '.join(map(str, divisors(shape[1], shape[2])))}")
        latency = self.config.select.budget or self.config.ensemble.latency_ms == "budget"
        if latency and (ctx.target is None or ctx.target.budgets.latency_ms is None):
            name = ctx.target.name if ctx.target else "(none)"
            raise ConfigError(f"{where}: select.budget / ensemble.latency_ms: budget: target {name} has no latency "
                              f"budget; give one in the profile or choose by smallest_within")
        if self.config.chain == "progressive":
            macs = [count_macs(build_model(student_spec(s, spec, shape, "parallel")), shape) for s in self.config.sizes()]
            for i in range(1, len(macs)):
                if macs[i] > macs[i - 1]:
                    ctx.log(f"warning: {where}: students[{i}] ({macs[i]:,} MACs) is larger than students[{i - 1}] "
                            f"({macs[i - 1]:,}), which teaches it in the progressive chain")

    def run(self, model, spec, ctx) -> StageResult:
        import torch

        from ..methods.budget import goal_for, latency_goal
        from ..methods.distill.chain import (best_subset, choose_primary, ensemble_model, member_probs, mixture_accuracy,
                                             train_chain, whole)
        from ..methods.measure import onnx_latencies
        from ..metrics import count_macs
        from ..models import build_model
        from ..training import evaluate

        cfg, shape, val = self.config, ctx.data.input_shape, ctx.data.val
        teacher_accuracy = evaluate(model, val, ctx.data_config.eval_batch_size, ctx.device)["accuracy"]
        teacher_macs = count_macs(model, shape)
        torch.manual_seed(ctx.seed)
        specs = [student_spec(size, spec, shape, cfg.scan) for size in cfg.sizes()]
        students = [build_model(s).to(ctx.device) for s in specs]
        histories = train_chain(model, students, cfg, ctx, cfg.alpha, cfg.temperature, cfg.chain == "progressive")

        probs = member_probs(students, val, ctx.data_config.eval_batch_size, ctx.device)
        family = {f"student-{k}": Variant(student.cpu(), s, {"history": h, "student": size.model_dump()})
                  for k, (student, s, h, size) in enumerate(zip(students, specs, histories, cfg.sizes()), 1)}
        metrics = {"teacher_val_accuracy": teacher_accuracy, "teacher_macs": teacher_macs}
        if cfg.ensemble.enabled:
            goal = goal_for(cfg.ensemble.macs, cfg.ensemble.latency_ms, model, ctx.target, shape)
            costs = [goal.measure(s) if goal else 0.0 for s in students]
            fitted = cfg.ensemble.weights == "fitted"
            choice = best_subset(probs, val.y, costs, goal.value, fitted) if goal else whole(probs, val.y, fitted)
            if choice is None:
                ctx.log(f"[{ctx.stage_name}] no student fits the ensemble budget; no ensemble variant")
            else:
                ensemble, ensemble_spec = ensemble_model(students, specs, choice, spec.in_channels, spec.num_classes)
                family["ensemble"] = Variant(ensemble, ensemble_spec, {"members": [f"student-{i + 1}" for i in choice.members],
                                                                     "weights": choice.weights, "budget_cost": choice.cost})
            uniform = torch.full((len(students),), 1 / len(students))
            metrics["all_students_ensemble_val_accuracy"] = mixture_accuracy(probs, uniform, val.y)

        # timed together in alternating rounds, so that the members' latencies compare
        timed = onnx_latencies({name: v.model for name, v in family.items()}, val.x[:64], onnx_folder(ctx),
                               cfg.latency_batch_sizes, cfg.latency_runs)
        for name, variant in family.items():
            variant.metrics.update(macs_share=count_macs(variant.model, shape) / teacher_macs,
                                   val_accuracy=evaluate(variant.model, val, ctx.data_config.eval_batch_size)["accuracy"],
                                   **timed[name])
        if cfg.select.budget:
            chosen = choose_primary(family, latency_goal(ctx.target.budgets.latency_ms, ctx.target, shape), None)
        else:
            chosen = choose_primary(family, None, teacher_accuracy - cfg.select.smallest_within / 100)
        ctx.log(f"[{ctx.stage_name}] primary: {chosen} ({family[chosen].metrics['val_accuracy']:.2%}, "
                f"{family[chosen].metrics['macs_share']:.1%} of the teacher's MACs); teacher {teacher_accuracy:.2%}")
        metrics.update(primary=chosen, family={n: {k: v.metrics[k] for k in ("macs_share", "val_accuracy", "latency_ms",
                                                                            "max_abs_diff")} for n, v in family.items()})
        return StageResult(model=family[chosen].model, spec=family[chosen].spec, metrics=metrics, variants=family)


def student_spec(size: StudentSize, teacher_spec, input_shape, scan: str):
    """The `mamba_s` spec of one student for images of `input_shape` and the teacher's classes."""
    from ..models import make_spec

    return make_spec("mamba_s", teacher_spec.in_channels, teacher_spec.num_classes,
                     {**size.model_dump(), "image_size": list(input_shape[1:]), "scan": scan})


def divisors(height: int, width: int) -> list[int]:
    """The first few common divisors of an image's sides (1 and, for a prime side, the side itself)."""
    return [d for d in range(1, min(height, width) + 1) if height % d == 0 and width % d == 0][:5]


def onnx_folder(ctx):
    """Where the family members' timed ONNX files go: the stage's work folder."""
    return (ctx.stage_dir or ctx.run_dir / "work") / "onnx"

