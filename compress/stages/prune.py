"""`type: prune` — gradual pruning (Zhu & Gupta) during fine-tuning: unstructured magnitude, N:M (2:4) or whole channels
(and blocks). The settings are in `methods/pruning/config.py`, the mechanics in `methods/pruning` and
`methods/budget.py`; this file is the glue."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import Field

from ..errors import ConfigError
from ..methods.pruning.config import PruneSettings
from .base import Stage, StageConfig, StageResult, register_stage


class PruneConfig(PruneSettings, StageConfig):
    type: Literal["prune"] = Field("prune", description="the stage's registered name")


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
        ratio, layer_ratios, pruned = shapes_for(model, example, ignored, dropped, round_to, goal, cfg.sparsity, cfg.round_to_min,
                                                 cfg.fill_budget)
        if goal is not None and cfg.schedule.initial_sparsity > ratio:
            raise ConfigError(f"schedule.initial_sparsity {cfg.schedule.initial_sparsity} is above the channel ratio "
                              f"{ratio:.3f} that {goal.key} {goal.value:g} needs")
        check_rebuilds(pruned, spec.then(Resize(modules=resize_changes(before, shape_attrs(pruned))), Drop(modules=dropped)))
        applied = schedule_channels(trainer, model, example, ignored, dropped, ratio, cfg.schedule, cfg.importance, round_to,
                                    cfg.round_to_min, layer_ratios)
        history = trainer.fit()
        after = shape_attrs(model)
        metrics = {"method": "channel", "scope": plan.scope, "schedule": applied, "channel_ratio": ratio, "widened": layer_ratios,
                   "round_to": round_to, "round_to_min": cfg.round_to_min,
                   "narrower_than_alignment": narrower_than(before, plan.scope, round_to),
                   "dropped_blocks": dropped, "macs_ratio": count_macs(model, shape) / base_macs,
                   "layer_sparsity": channel_sparsity(before, after, list(plan.layers)), "history": history}
        if goal is not None:
            metrics["goal"] = {"key": goal.key, "value": goal.value, "reached": goal.measure(model)}
        return StageResult(model=model, spec=spec.then(Resize(modules=resize_changes(before, after)), Drop(modules=dropped)),
                           metrics=metrics)
