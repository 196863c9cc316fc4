"""`type: slice` — sub-network slicing (SortedNet; Matryoshka). The incoming model becomes a nested supernet whose
prefixes (the most important channels of every channel group, the first blocks of every residual stage) are good
models; it is sorted by importance, trained once with the sandwich rule and in-place distillation, and cut into a grid
of standalone sub-networks. For each target the most accurate sub-network within its budgets goes on; the grid is
the stage's model family. The mechanics are in `methods/slicing`."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, field_validator

from ..config import Count, Strict, TrainConfig
from ..errors import ConfigError
from .base import Stage, StageConfig, StageResult, Variant, register_stage

DEFAULT_WIDTHS = [0.25, 0.3, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]


class StageTeacher(Strict):
    """`{stage: NAME}`: the model an earlier stage of this run produced."""

    stage: str = Field(description="the earlier stage's name, or type when unnamed")


class SliceConfig(StageConfig, TrainConfig):
    type: Literal["slice"] = Field("slice", description="the stage's registered name")
    widths: list[float] = Field(default_factory=lambda: list(DEFAULT_WIDTHS), min_length=1, max_length=64,
                                description="width multipliers of the grid, in (0, 1]; 1.0 (the full network) must be one")
    depths: Optional[list[Count]] = Field(None, max_length=64, description="blocks kept per residual stage (the first d); "
                                          "omit for width only")
    samples_per_step: int = Field(2, ge=0, le=64, description="sub-networks sampled each step besides the full and the smallest")
    smallest: Literal["per_depth", "overall"] = Field(
        "per_depth", description="the sandwich's smallest sub-network: the narrowest of each depth in turn (per_depth), "
                                 "or the narrowest and shallowest every step (overall)")
    inplace_distillation: Union[bool, StageTeacher] = Field(
        True, description="sub-networks learn the full network's soft predictions (true), an earlier stage's ({stage: "
                          "NAME}: the full network learns from it too), or the labels (false)")
    temperature: float = Field(1.0, gt=0, le=1000, description="softmax temperature of distillation from a stage")
    bn_recalibration_batches: int = Field(50, ge=0, le=1_000_000, description="training batches that recompute each "
                                              "sub-network's BatchNorm statistics", json_schema_extra={"smoke": 2})
    round_to: Optional[Count] = Field(None, description="channel counts become multiples of this; default: the largest "
                                      "channel_alignment of the run's targets")

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: list[float]) -> list[float]:
        bad = [w for w in v if not 0 < w <= 1]
        if bad:
            raise ValueError(f"every width must be in (0, 1], got {bad[0]:g}")
        if 1.0 not in v:
            raise ValueError("must include 1.0: the full network, which trains every step and teaches the others")
        if len(set(v)) != len(v):
            raise ValueError("lists a width twice")
        return sorted(v)

    @field_validator("depths")
    @classmethod
    def _depths(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("lists a depth twice")
        return sorted(v) if v else v

    def earlier_stages(self) -> dict[str, str]:
        teacher = self.inplace_distillation
        return {"inplace_distillation.stage": teacher.stage} if isinstance(teacher, StageTeacher) else {}


@register_stage
class SliceStage(Stage):
    type = "slice"
    Config = SliceConfig
    variant_per_target = True
    example = {"type": "slice", "widths": [0.25, 0.5, 0.75, 1.0], "depths": [1, 2], "samples_per_step": 2,
               "smallest": "per_depth", "inplace_distillation": True, "bn_recalibration_batches": 20, "epochs": 3}

    def target_dependence(self) -> Optional[str]:
        return "it chooses the most accurate sub-network within each target's budgets"

    def check(self, model, spec, ctx) -> None:
        """The supernet can be built, and the smallest sub-network of the grid fits every target's budgets."""
        from ..methods.budget import over_budget, target_costs

        supernet = self.supernet(model, ctx)
        smallest = self.grid()[0]
        dense, _ = supernet.extract(smallest)
        for target in ctx.targets:
            over = over_budget(target_costs(dense, target, ctx.data.input_shape), target)
            if over:
                raise ConfigError(f"stage {ctx.stage_name!r}: no sub-network can fit the budgets of target {target.name}: "
                                  f"the smallest, {smallest.name}, has {'; '.join(over)} (cost model, "
                                  f"{target.preferred_precisions[0]}); add smaller widths or depths")

    def supernet(self, model, ctx):
        """The nested supernet of `model`; a model with nothing to nest or too few blocks is a ConfigError."""
        from ..methods.slicing.supernet import nested

        cfg = self.config
        align = cfg.round_to or max([t.channel_alignment for t in ctx.targets] or [1])
        try:
            supernet = nested(model, ctx.data.input_shape, ctx.device, align, depth=bool(cfg.depths))
        except ConfigError as e:
            raise ConfigError(f"stage {ctx.stage_name!r}: {e}") from None
        if cfg.depths and cfg.depths[-1] > supernet.max_depth:
            stages = supernet.stages
            raise ConfigError(f"stage {ctx.stage_name!r}: depths: {cfg.depths[-1]} blocks per stage, but the model's longest "
                              f"residual stage has {supernet.max_depth} ({', '.join(map(str, stages[:3])) or 'none found'})")
        return supernet

    def grid(self):
        from ..methods.slicing.supernet import SubNet

        return [SubNet(w, d) for d in self.config.depths or [None] for w in self.config.widths]

    def run(self, model, spec, ctx) -> StageResult:
        import time

        from ..methods.distill.losses import TeacherTargets
        from ..methods.distill.teachers import stage_teacher
        from ..methods.slicing.family import choose, cut_family, pareto_names
        from ..methods.slicing.supernet import sort_by_importance
        from ..methods.slicing.training import SandwichStep
        from ..data import BatchLoader
        from ..training import Trainer

        cfg = self.config
        supernet = self.supernet(model, ctx)
        sort_by_importance(supernet)
        grid = self.grid()
        teacher = None
        if isinstance(cfg.inplace_distillation, StageTeacher):
            source = stage_teacher(cfg.inplace_distillation.stage, "inplace_distillation", ctx)
            teacher = TeacherTargets([source.model], ctx.data.train, cfg.temperature, ctx.device,
                                     cache=not ctx.data_config.augment)
        trainer = Trainer(model, cfg, ctx)
        trainer.step_fn = SandwichStep(supernet, grid, cfg.samples_per_step, bool(cfg.inplace_distillation), ctx.seed,
                                       trainer.loss_fn, teacher, cfg.temperature, cfg.smallest)
        started = time.perf_counter()
        history = trainer.fit()
        train_seconds = time.perf_counter() - started
        # the same global batches on every torchrun rank, so that every rank measures and chooses alike
        calibration = BatchLoader(ctx.data.train, ctx.data_config.batch_size, shuffle=True, seed=ctx.seed)
        members = cut_family(supernet, grid, ctx, cfg.bn_recalibration_batches, calibration)
        chosen = {t.name: choose(members, t) for t in ctx.targets or ([ctx.target] if ctx.target else [])}
        primary = next(iter(chosen.values()), members[-1])
        for target, member in chosen.items():
            member.metrics.setdefault("chosen_for", []).append(target)
        metrics = {"supernet_groups": len(supernet.nesting.groups), "fixed_layers": supernet.nesting.fixed,
                   "residual_stages": supernet.stages, "round_to": supernet.align, "history": history,
                   "train_seconds": train_seconds,
                   "chosen": {t: m.subnet.name for t, m in chosen.items()}, "pareto": pareto_names(members),
                   "subnets": {m.subnet.name: m.metrics for m in members}}
        variants = {m.subnet.name: Variant(m.model, spec.then(*m.transforms), m.metrics) for m in members if m is not primary}
        return StageResult(model=primary.model, spec=spec.then(*primary.transforms), metrics=metrics, variants=variants)
