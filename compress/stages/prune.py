"""`type: prune` — gradual pruning (Zhu & Gupta) during fine-tuning: unstructured magnitude, N:M (2:4) or whole channels
(and blocks). The mechanics are in `methods/pruning` and `methods/budget.py`; this file holds the settings and the glue."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

from pydantic import Field, PositiveFloat, field_validator, model_validator

from ..config import Count, TrainConfig
from ..errors import ConfigError, shown
from ..methods.distill.config import SelfDistillation
from ..methods.pruning.schedule import ScheduleConfig
from .base import Stage, StageConfig, StageResult, register_stage

METHOD_KEYS = {"target_macs": "channel", "target_latency_ms": "channel", "importance": "channel", "round_to": "channel",
               "round_to_min": "channel",
               "drop_blocks": "channel", "global_ranking": "magnitude", "pattern": "nm"}  # keys that apply to one method only


class PruneConfig(StageConfig, TrainConfig):
    type: Literal["prune"] = Field("prune", description="the stage's registered name")
    method: Literal["magnitude", "nm", "channel"] = Field(
        "magnitude", description="magnitude: unstructured weights; nm: N:M semi-structured (TensorRT 2:4); channel: whole channels")
    final_sparsity: Optional[float] = Field(
        None, description="magnitude: share of weights zeroed (default 0.5); nm: set by `pattern`; channel: share of each "
                          "layer's channels removed (default 0.5 unless target_macs or target_latency_ms)")
    target_macs: Optional[float] = Field(None, description="channel: share of the model's MACs to keep, instead of final_sparsity")
    target_latency_ms: Optional[Union[PositiveFloat, Literal["budget"]]] = Field(
        None, description="channel: batch-1 latency on the target (cost model, its first preferred precision); 'budget': the target's budget")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="the pruning schedule")
    lr_schedule: Literal["cosine", "constant", "step"] = Field("cosine", description="per-step learning-rate schedule")
    include: list[str] = Field(["*"], description="name patterns (fnmatch) of the conv/linear layers in scope")
    exclude: Optional[list[str]] = Field(None, description="name patterns kept unpruned; default: the first layer and the "
                                                           "classifier (channel: the classifier)")
    global_ranking: bool = Field(False, description="magnitude: rank weights across all layers instead of per layer")
    pattern: str = Field("2:4", description="nm: at most N non-zeros in every M weights along the input dimension")
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = Field("l2", description="channel: how channels are ranked")
    round_to: Optional[Count] = Field(None, description="channel: channel counts become multiples of this; default: "
                                                              "the target's channel_alignment")
    round_to_min: Optional[Count] = Field(None, description="channel: layers at or below round_to channels (a bottleneck "
                                                            "already narrower than the alignment) round to this instead, "
                                                            "so they can still shrink; must be below round_to")
    drop_blocks: Optional[Union[Count, list[str]]] = Field(
        None, description="channel: also remove whole blocks (depth) on the same schedule: module names, or a count to take "
                          "the costliest on the target (by MACs without one); a block must return its input's shape, as a "
                          "residual block does. MACs and latency goals count the model without them")
    lr: float = Field(0.05, gt=0, description="peak learning rate of the fine-tuning")
    distill: Optional[SelfDistillation] = Field(None, description="learn the unpruned model's soft predictions while pruning "
                                            "({} for the defaults); omit to fine-tune on the labels only")

    @field_validator("final_sparsity")
    @classmethod
    def _sparsity(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not 0 <= v < 1:
            raise ValueError(f"must be in [0, 1), got {v}")
        return v

    @field_validator("target_macs")
    @classmethod
    def _macs(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not 0 < v < 1:
            raise ValueError(f"must be the share of MACs to keep, in (0, 1), got {v}")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        n, _, m = v.partition(":")
        if not (n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
            raise ValueError(f"must be 'N:M' with 0 < N < M, e.g. '2:4', got {shown(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "PruneConfig":
        for key, method in METHOD_KEYS.items():
            if key in self.model_fields_set and self.method != method:
                raise ValueError(f"{key} applies to method {method} only, not {self.method}")
        goals = [k for k in ("final_sparsity", "target_macs", "target_latency_ms") if getattr(self, k) is not None]
        if len(goals) > 1:
            raise ValueError(f"give one of final_sparsity, target_macs, target_latency_ms, not {' and '.join(goals)}")
        if self.method == "nm" and self.final_sparsity is not None and abs(self.final_sparsity - self.sparsity) > 1e-9:
            raise ValueError(f"final_sparsity: pattern {self.pattern} means sparsity {self.sparsity:g}; leave final_sparsity out")
        if self.sparsity is not None and self.schedule.initial_sparsity > self.sparsity:
            raise ValueError(f"schedule.initial_sparsity {self.schedule.initial_sparsity} is above the final sparsity {self.sparsity}")
        return self

    @property
    def nm(self) -> tuple[int, int]:
        n, m = self.pattern.split(":")
        return int(n), int(m)

    @property
    def sparsity(self) -> Optional[float]:
        """The final sparsity, or None when a MACs or latency target decides it."""
        if self.method == "nm":
            return 1 - self.nm[0] / self.nm[1]
        if self.target_macs is not None or self.target_latency_ms is not None:
            return None
        return 0.5 if self.final_sparsity is None else self.final_sparsity

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.model_dump(include=set(TrainConfig.model_fields) - {"schedule"}), schedule=self.lr_schedule)


@dataclass
class Plan:
    """What a prune stage works on, worked out (and checked) before it trains: layers in forward order, the layers in
    scope, and the stage's length in training steps."""

    layers: dict[str, Any]
    scope: list[str]
    total_steps: int


@register_stage
class PruneStage(Stage):
    type = "prune"
    Config = PruneConfig
    example = {"type": "prune", "method": "channel", "target_macs": 0.25, "drop_blocks": 1,
               "schedule": {"kind": "cubic", "start": 0.0, "end": 0.3, "frequency": 50}, "importance": "l2",
               "distill": {"temperature": 1.0, "hard_label_weight": 0.5}, "epochs": 3}

    def target_dependence(self) -> Optional[str]:
        cfg = self.config
        if cfg.method != "channel":
            return None
        if cfg.target_latency_ms is not None:
            return "its latency goal is estimated by the target's cost model"
        if isinstance(cfg.drop_blocks, int):
            return "it drops the blocks with the highest estimated latency on the target (name the blocks instead)"
        if cfg.round_to is None:
            return "its channel counts round to the target's channel_alignment (set round_to)"
        return None

    def check(self, model, spec, ctx) -> None:
        self.plan(model, ctx)

    def plan(self, model, ctx) -> Plan:
        """Layers, scope and schedule; a pattern that matches nothing or a schedule that does not fit is a ConfigError."""
        from ..methods.pruning.blocks import blocks_to_drop
        from ..methods.pruning.masks import layers_in_order, nm_eligible, pruning_scope
        from ..training import make_loader

        cfg = self.config
        try:
            layers = layers_in_order(model, ctx.data.input_shape)
            scope = pruning_scope(list(layers), cfg.include, cfg.exclude, structured=cfg.method == "channel")
            if cfg.method == "nm" and not any(nm_eligible(layers[n].weight, cfg.nm[1]) for n in scope):
                raise ConfigError(f"no layer in scope can hold the {cfg.pattern} pattern (input channels must be a multiple "
                                  f"of {cfg.nm[1]})")
            total = len(make_loader(ctx)) * cfg.epochs
            cfg.schedule.steps(total)
            if cfg.drop_blocks:
                blocks_to_drop(model, ctx.data.input_shape, cfg.drop_blocks, ctx.target)
            if cfg.round_to_min is not None and cfg.round_to_min >= self.round_to(ctx):
                raise ConfigError(f"round_to_min: {cfg.round_to_min} must be below the alignment it lowers, {self.round_to(ctx)} "
                                  f"({'round_to' if cfg.round_to else f'target {ctx.target.name} channel_alignment'})")
            self.goal(model, ctx)
        except ConfigError as e:
            raise ConfigError(f"stage {ctx.stage_name!r}: {e}") from None
        return Plan(layers, scope, total)

    def round_to(self, ctx) -> int:
        """The channel alignment: `round_to`, or the target's."""
        return self.config.round_to or (ctx.target.channel_alignment if ctx.target else 1)

    def goal(self, model, ctx):
        """The MACs or latency goal of the channel search, or None for a plain channel ratio."""
        from ..methods.budget import goal_for

        return goal_for(self.config.target_macs, self.config.target_latency_ms, model, ctx.target, ctx.data.input_shape)

    def run(self, model, spec, ctx) -> StageResult:
        from ..methods.distill.losses import self_distillation_loss
        from ..training import Trainer

        cfg, plan = self.config, self.plan(model, ctx)
        loss_fn = self_distillation_loss(model, cfg.distill, ctx, cfg.label_smoothing) if cfg.distill else None
        trainer = Trainer(model, cfg.train_config(), ctx, loss_fn=loss_fn)
        prune = self.prune_channels if cfg.method == "channel" else self.prune_weights
        try:
            return prune(model, spec, ctx, trainer, plan)
        except ConfigError as e:
            raise ConfigError(f"stage {ctx.stage_name!r}: {e}") from None

    def prune_weights(self, model, spec, ctx, trainer, plan: Plan) -> StageResult:
        from ..methods.pruning.masks import MaskPruning, layer_sparsity, nm_eligible, nm_violations
        from ..models.spec import Sparsity

        cfg = self.config
        nm = cfg.nm if cfg.method == "nm" else None
        chosen = {n: plan.layers[n] for n in plan.scope if nm is None or nm_eligible(plan.layers[n].weight, nm[1])}
        callback = MaskPruning(chosen, cfg.schedule.events(cfg.sparsity, plan.total_steps), cfg.global_ranking, nm)
        trainer.callbacks.append(callback)
        history = trainer.fit()
        metrics = {"method": cfg.method, "scope": list(chosen), "schedule": callback.applied,
                   "layer_sparsity": layer_sparsity(plan.layers), "history": history}
        if not nm:
            return StageResult(model=model, metrics=metrics)
        violations = nm_violations(chosen, *nm)
        metrics.update(sparsity_pattern=None if violations else cfg.pattern, nm_violations=violations)
        return StageResult(model=model, metrics=metrics,
                           spec=None if violations else spec.marked(Sparsity(pattern=cfg.pattern, layers=list(chosen))))

    def prune_channels(self, model, spec, ctx, trainer, plan: Plan) -> StageResult:
        import torch

        from ..metrics import count_macs
        from ..methods.pruning.blocks import blocks_to_drop
        from ..methods.pruning.channels import channel_sparsity, check_rebuilds, narrower_than, schedule_channels, shapes_for
        from ..models.resize import resize_changes, shape_attrs
        from ..models.spec import Drop, Resize

        cfg, shape = self.config, ctx.data.input_shape
        example = torch.zeros(1, *shape, device=ctx.device)
        ignored = [n for n in plan.layers if n not in plan.scope]
        round_to = self.round_to(ctx)
        before, base_macs = shape_attrs(model), count_macs(model, shape)
        dropped = blocks_to_drop(model, shape, cfg.drop_blocks, ctx.target) if cfg.drop_blocks else []
        goal = self.goal(model, ctx)
        ratio, pruned = shapes_for(model, example, ignored, dropped, round_to, goal, cfg.sparsity, cfg.round_to_min)
        if goal is not None and cfg.schedule.initial_sparsity > ratio:
            raise ConfigError(f"schedule.initial_sparsity {cfg.schedule.initial_sparsity} is above the channel ratio "
                              f"{ratio:.3f} that {goal.key} {goal.value:g} needs")
        check_rebuilds(pruned, spec.then(Resize(modules=resize_changes(before, shape_attrs(pruned))), Drop(modules=dropped)))
        applied = schedule_channels(trainer, model, example, ignored, dropped, ratio, cfg.schedule, cfg.importance, round_to,
                                    cfg.round_to_min)
        history = trainer.fit()
        after = shape_attrs(model)
        metrics = {"method": "channel", "scope": plan.scope, "schedule": applied, "channel_ratio": ratio, "round_to": round_to,
                   "round_to_min": cfg.round_to_min, "narrower_than_alignment": narrower_than(before, plan.scope, round_to),
                   "dropped_blocks": dropped, "macs_ratio": count_macs(model, shape) / base_macs,
                   "layer_sparsity": channel_sparsity(before, after, list(plan.layers)), "history": history}
        if goal is not None:
            metrics["goal"] = {"key": goal.key, "value": goal.value, "reached": goal.measure(model)}
        return StageResult(model=model, spec=spec.then(Resize(modules=resize_changes(before, after)), Drop(modules=dropped)),
                           metrics=metrics)
