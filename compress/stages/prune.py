"""`type: prune` — gradual pruning (Zhu & Gupta) during fine-tuning: unstructured magnitude, N:M (2:4) or whole channels."""
from __future__ import annotations

import copy
from typing import Any, Literal, Optional, Union

import torch
from pydantic import Field, PositiveFloat, field_validator, model_validator
from torch import nn

from ..block_dropping import BlockDropping, choose_blocks, droppable_blocks, nested
from ..channel_pruning import MAX_RATIO, ChannelPruning, check_rebuilds, make_pruner, ratio_for, trial
from ..config import Count, Natural, Strict
from ..context import RunContext
from ..errors import ConfigError
from ..metrics import count_macs, layer_costs
from ..models.resize import remove_modules, resize_changes, shape_attrs
from ..pruning import MaskPruning, layer_sparsity, layers_in_order, nm_eligible, nm_violations, schedule, select, sparsity_at
from ..targets.cost import estimate_latency_ms
from ..training import TrainConfig, Trainer
from .base import Stage, StageConfig, StageResult, register_stage

METHOD_KEYS = {"target_macs": "channel", "target_latency_ms": "channel", "importance": "channel", "round_to": "channel",
               "drop_blocks": "channel", "global_ranking": "magnitude", "pattern": "nm"}  # keys that apply to one method only


class ScheduleConfig(Strict):
    """When pruning happens: from `start` to `end`, every `frequency` training steps."""

    kind: Literal["cubic", "linear", "one_shot"] = Field("cubic", description="cubic: Zhu & Gupta; one_shot: all at `start`, then fine-tune")
    initial_sparsity: float = Field(0.0, ge=0, lt=1, description="sparsity set at the first pruning step")
    start: float = Field(0.0, description="first pruning step, as a fraction of the stage's training steps")
    end: float = Field(0.3, description="step where the final sparsity is reached, as a fraction (1 = the last step); the rest "
                                        "of the stage recovers accuracy")
    start_step: Optional[Natural] = Field(None, description="first pruning step as a step number; replaces `start`")
    end_step: Optional[Count] = Field(None, description="last pruning step as a step number; replaces `end`")
    frequency: Count = Field(50, description="training steps between pruning steps")

    @field_validator("start", "end")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0 <= v <= 1:
            raise ValueError(f"must be a fraction of the stage's training steps in [0, 1] (1 = the end of training), got {v}; "
                             f"use start_step/end_step for step numbers")
        return v

    @model_validator(mode="after")
    def _order(self) -> "ScheduleConfig":
        if self.kind != "one_shot" and self.start_step is None and self.end_step is None and self.start >= self.end:
            raise ValueError(f"start ({self.start}) must come before end ({self.end})")
        return self

    def steps(self, total: int) -> tuple[int, int]:
        """(start, end) as step numbers of a stage that trains for `total` steps (one_shot: both are its one step)."""
        start = self.start_step if self.start_step is not None else round(self.start * total)
        end = start if self.kind == "one_shot" else self.end_step if self.end_step is not None else round(self.end * total)
        if end > total:
            raise ConfigError(f"schedule ends at step {end}, after training ends (step {total}); lower start_step/end_step or add epochs")
        if self.kind != "one_shot" and start >= end:
            raise ConfigError(f"schedule starts at step {start}, not before its end at step {end}")
        return start, end


class PruneConfig(StageConfig, TrainConfig):
    type: Literal["prune"] = "prune"
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
    drop_blocks: Optional[Union[Count, list[str]]] = Field(
        None, description="channel: also remove whole blocks (depth) on the same schedule: module names, or a count to take "
                          "the costliest on the target (by MACs without one); a block must return its input's shape, as a "
                          "residual block does. MACs and latency goals count the model without them")
    lr: float = Field(0.05, gt=0, description="peak learning rate of the fine-tuning")

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
            raise ValueError(f"must be 'N:M' with 0 < N < M, e.g. '2:4', got {v!r}")
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


@register_stage
class PruneStage(Stage):
    type = "prune"
    Config = PruneConfig
    uses_target = True  # channel counts follow the target's alignment; latency goals use its cost model

    def run(self, model: nn.Module, spec: dict[str, Any], ctx: RunContext) -> StageResult:
        cfg = self.config
        try:
            layers = layers_in_order(model, ctx.data.input_shape)
            names = list(layers)
            default = names[-1:] if cfg.method == "channel" else list(dict.fromkeys([names[0], names[-1]]))
            scope = select(names, cfg.include, default if cfg.exclude is None else cfg.exclude)
            if not scope:
                raise ConfigError("include/exclude leave no conv or linear layer to prune")
            trainer = Trainer(model, cfg.train_config(), ctx)
            steps = cfg.schedule.steps(trainer.total_steps)
            prune = self.prune_channels if cfg.method == "channel" else self.prune_weights
            return prune(model, spec, ctx, trainer, layers, scope, steps)
        except ConfigError as e:
            raise ConfigError(f"stage {ctx.stage_name!r}: {e}") from None

    def events(self, final: float, steps: tuple[int, int]) -> list[tuple[int, float]]:
        """The schedule's pruning steps that prune something: (step, sparsity)."""
        s = self.config.schedule
        return [(t, v) for t, v in schedule(s.kind, s.initial_sparsity, final, *steps, s.frequency) if v > 0]

    def prune_weights(self, model, spec, ctx, trainer: Trainer, layers: dict[str, nn.Module], scope: list[str], steps) -> StageResult:
        cfg = self.config
        nm = cfg.nm if cfg.method == "nm" else None
        chosen = {name: layers[name] for name in scope if nm is None or nm_eligible(layers[name].weight, nm[1])}
        if not chosen:
            raise ConfigError(f"no layer in scope can hold the {cfg.pattern} pattern (input channels must be a multiple of {nm[1]})")
        callback = MaskPruning(chosen, self.events(cfg.sparsity, steps), cfg.global_ranking, nm)
        trainer.callbacks.append(callback)
        history = trainer.fit()
        metrics = {"method": cfg.method, "scope": list(chosen), "schedule": callback.applied,
                   "layer_sparsity": layer_sparsity(layers), "history": history}
        if not nm:
            return StageResult(model=model, metrics=metrics)
        violations = nm_violations(chosen, *nm)
        metrics.update(sparsity_pattern=None if violations else cfg.pattern, nm_violations=violations)
        marked = {**spec, "sparsity_pattern": cfg.pattern, "sparse_layers": [n for n, m in chosen.items() if nm_eligible(m.weight, nm[1])]}
        return StageResult(model=model, spec=None if violations else marked, metrics=metrics)

    def prune_channels(self, model, spec, ctx, trainer: Trainer, layers: dict[str, nn.Module], scope: list[str], steps) -> StageResult:
        cfg, shape, names = self.config, ctx.data.input_shape, list(layers)
        example = torch.zeros(1, *shape, device=ctx.device)
        ignored = [n for n in names if n not in scope]
        round_to = cfg.round_to or (ctx.target.channel_alignment if ctx.target else 1)
        before, base_macs = shape_attrs(model), count_macs(model, shape)
        dropped = self.blocks_to_drop(model, ctx) if cfg.drop_blocks else []
        # the channel ratio is searched on the model without the dropped blocks: the shapes it ends with
        shallow = remove_modules(copy.deepcopy(model), dropped)
        kept_ignored = [n for n in ignored if not any(nested(n, d) for d in dropped)]
        goal = self.goal(ctx, base_macs)
        if goal is None:
            ratio = cfg.sparsity
            pruned = trial(shallow, example, kept_ignored, ratio, round_to)
        else:
            key, measure, value = goal
            ratio, pruned = ratio_for(shallow, example, kept_ignored, round_to, measure, value)
            if measure(pruned) > value:
                raise ConfigError(f"{key} {value:g} cannot be reached: removing {MAX_RATIO:.0%} of each layer's channels still "
                                  f"gives {measure(pruned):.4g}; the excluded layers and alignment to {round_to} channels set the floor")
            if cfg.schedule.initial_sparsity > ratio:
                raise ConfigError(f"schedule.initial_sparsity {cfg.schedule.initial_sparsity} is above the channel ratio "
                                  f"{ratio:.3f} that {key} {value:g} needs")
        changes = resize_changes(before, shape_attrs(pruned))
        if ratio > 0 and not changes and not dropped:
            raise ConfigError(f"removing {ratio:.1%} of each layer's channels changes no layer: raise the ratio, lower round_to "
                              f"({round_to}), or check that torch-pruning can follow the model (no torch.no_grad in forward)")
        resized = {k: v for k, v in spec.items() if k not in ("sparsity_pattern", "sparse_layers")}
        resized["resize"] = {**spec.get("resize", {}), **changes}
        if dropped:
            resized["dropped"] = [*spec.get("dropped", []), *dropped]
        check_rebuilds(pruned, resized)
        if dropped:  # the blocks fade out on the channels' schedule, from 1 (kept) to 0 (gone)
            kind = cfg.schedule.kind
            trainer.callbacks.append(BlockDropping(model, dropped, lambda step: 1.0 - sparsity_at(step, kind, 0.0, 1.0, *steps)))
        events, applied = self.events(ratio, steps), []
        if events:
            callback = ChannelPruning(make_pruner(model, example, ignored, [v for _, v in events], cfg.importance, round_to), events)
            trainer.callbacks.append(callback)
            applied = callback.applied
        history = trainer.fit()
        after = shape_attrs(model)
        resized["resize"] = {**spec.get("resize", {}), **resize_changes(before, after)}
        metrics = {"method": "channel", "scope": scope, "schedule": applied, "channel_ratio": ratio, "round_to": round_to,
                   "dropped_blocks": dropped, "macs_ratio": count_macs(model, shape) / base_macs,
                   "layer_sparsity": {n: 1 - width(after[n]) / width(before[n]) if n in after else 1.0 for n in names},
                   "history": history}
        if goal is not None:
            metrics["goal"] = {"key": goal[0], "value": goal[2], "reached": goal[1](model)}
        return StageResult(model=model, spec=resized, metrics=metrics)

    def blocks_to_drop(self, model: nn.Module, ctx: RunContext) -> list[str]:
        """The blocks `drop_blocks` names, or that many of the droppable ones with the highest estimated latency on the
        target (most MACs without a target)."""
        shape, target = ctx.data.input_shape, ctx.target
        costs = layer_costs(model, shape)

        def cost(block: str) -> float:
            inside = [c for c in costs if nested(c.name, block)]
            if target is None:
                return sum(c.macs for c in inside)
            return estimate_latency_ms(inside, target.preferred_precisions[0], target)

        return choose_blocks(droppable_blocks(model, shape), self.config.drop_blocks, cost)

    def goal(self, ctx: RunContext, base_macs: int):
        """(key, measure(model), value) for a MACs or latency target; None for a plain channel ratio."""
        cfg, shape = self.config, ctx.data.input_shape
        if cfg.target_macs is not None:
            return "target_macs", lambda m: count_macs(m, shape) / base_macs, cfg.target_macs
        if cfg.target_latency_ms is None:
            return None
        target = ctx.target
        if target is None:
            raise ConfigError("target_latency_ms needs a target profile")
        value = target.budgets.latency_ms if cfg.target_latency_ms == "budget" else cfg.target_latency_ms
        if value is None:
            raise ConfigError(f"target_latency_ms: budget: target {target.name} has no latency budget; give milliseconds")
        precision = target.preferred_precisions[0]
        measure = lambda m: estimate_latency_ms(layer_costs(m, shape), precision, target)  # noqa: E731
        return "target_latency_ms", measure, value


def width(attrs: dict[str, int]) -> int:
    """Output width of a conv or linear layer from its shape attributes."""
    return attrs.get("out_channels", attrs.get("out_features"))
