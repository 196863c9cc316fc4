"""Structured channel pruning with torch-pruning's dependency graph: coupled channels (residual additions,
concatenations, depthwise and grouped convolutions) are removed together, so the model becomes physically smaller."""
from __future__ import annotations

import copy
import math
from typing import Optional

import torch
import torch_pruning as tp
from torch import nn

from ...data import Batch
from ...errors import ConfigError
from ...metrics import layer_costs
from ...models import ModelSpec, build_model
from ...models.resize import layer_attrs, out_width, remove_modules, shape_attrs
from ...training import Callback, Trainer, evaluating
from ..budget import MAX_RATIO, Goal, smallest_ratio
from .blocks import BlockDropping, nested
from .schedule import Event, ScheduleConfig

IMPORTANCE = {
    "l1": lambda: tp.importance.MagnitudeImportance(p=1),
    "l2": lambda: tp.importance.MagnitudeImportance(p=2),
    "bn_scale": tp.importance.BNScaleImportance,
    "taylor": tp.importance.TaylorImportance,
}


class AlignedPruner(tp.pruner.BasePruner):
    """torch-pruning's pruner, with channel counts rounded to the nearest multiple of `round_to` (at least one); a
    channel group at or below `round_to` channels rounds to `round_to_min` instead, so a layer already narrower than
    the alignment can still shrink.

    Grouped convolutions (1 < groups < in_channels) keep their group count and lose the same positions in every
    group, on their input and their output: the channels that feed one (through a concatenation too) are chosen as
    one set, from importance averaged over its groups, and the kept count is a multiple of both the group count and
    the alignment."""

    def __init__(self, *args, round_to_min: Optional[int] = None, **kwargs):
        self.round_to_min = round_to_min
        super().__init__(*args, **kwargs)
        self.grouped = {m for m in self.model.modules() if is_grouped_conv(m)}
        if self.grouped:  # torch-pruning's chunking does not follow a group across a concatenation: those sets are ours
            every_group = self.DG.get_all_groups
            self.DG.get_all_groups = lambda **kw: (g for g in every_group(**kw) if not self._touches_grouped(g))

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        return current_channels - self._aligned_keep(current_channels - n_pruned, current_channels, 1)

    def _aligned_keep(self, keep: float, current: int, groups: int) -> int:
        """`keep` channels of `current` rounded to the nearest multiple of the alignment and of `groups` (at least
        one such multiple; `current` when even that is wider)."""
        unit = math.lcm(alignment(current, self.round_to, self.round_to_min) or 1, groups)
        return current if unit > current else min(current, max(unit, unit * int(keep / unit + 0.5)))

    def _touches_grouped(self, group) -> bool:
        return any(dep.target.module in self.grouped for dep, _ in group)

    def _prune(self):
        yield from self._prune_grouped()
        yield from super()._prune()

    def _prune_grouped(self):
        """One pruning group per channel set that a grouped convolution reads or writes, each pruned periodically."""
        ratio, done = self.per_step_pruning_ratio[self.current_step], set()
        for conv in sorted(self.grouped, key=lambda m: self.DG._module2name[m]):
            for fn, initial, current in ((tp.prune_conv_in_channels, self.layer_init_in_ch, conv.in_channels),
                                         (tp.prune_conv_out_channels, self.layer_init_out_ch, conv.out_channels)):
                group = self.DG.get_pruning_group(conv, fn, list(range(current)))
                sides = {(dep.target.module, dep.handler) for dep, _ in group if dep.target.module in self.grouped}
                if sides & done or any(self.DG.is_out_channel_pruning_fn(dep.handler) and dep.target.module in self.ignored_layers
                                       for dep, _ in group):
                    continue
                done |= sides
                blocks = math.lcm(*(m.groups for m, _ in sides))
                keep = self._aligned_keep(initial[conv] * (1 - ratio), current, blocks)
                imp = self.estimate_importance(group)
                if keep >= current or imp is None:
                    continue
                width = current // blocks
                drop = torch.argsort(imp.view(blocks, width).mean(0).cpu())[: width - keep // blocks]
                yield self.DG.get_pruning_group(conv, fn, [int(i) + b * width for b in range(blocks) for i in drop])


def alignment(channels: int, round_to: Optional[int], round_to_min: Optional[int]) -> Optional[int]:
    """The multiple a group of `channels` channels is rounded to: `round_to_min` at or below `round_to`, if set."""
    return round_to_min if round_to_min and channels <= round_to else round_to


def is_grouped_conv(module: nn.Module) -> bool:
    """A convolution with several groups that is not depthwise."""
    return isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups < module.in_channels


def make_pruner(model: nn.Module, example: torch.Tensor, ignored: list[str], ratios: list[float], importance: str = "l2",
                round_to: int = 1, round_to_min: Optional[int] = None,
                layer_ratios: Optional[dict[str, float]] = None) -> AlignedPruner:
    """A per-layer pruner whose i-th `step()` cuts each channel group to 1 - ratios[i] of its initial width; groups
    holding a layer named in `ignored` keep their channels. A group whose root layer is named in `layer_ratios` ends at
    that ratio instead, reached on the same schedule scaled (ratios[i] * its ratio / ratios[-1])."""
    was_training = model.training
    final = ratios[-1]
    try:
        return AlignedPruner(model, example, IMPORTANCE[importance](), pruning_ratio=final, iterative_steps=len(ratios),
                             iterative_pruning_ratio_scheduler=lambda ratio, steps: [0.0, *(r * ratio / final for r in ratios)],
                             pruning_ratio_dict={model.get_submodule(n): r for n, r in (layer_ratios or {}).items()},
                             ignored_layers=[model.get_submodule(name) for name in ignored], round_to=round_to,
                             round_to_min=round_to_min, unwrapped_parameters=channel_vectors(model))
    except Exception as e:
        check_runs(model, example, "torch-pruning cannot trace the model")
        raise ConfigError(f"torch-pruning cannot trace the model: {type(e).__name__}: {e}; exclude the layers around the "
                          f"operation it cannot follow, or use method magnitude or nm") from None
    finally:
        model.train(was_training)


def channel_vectors(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """The 1-D parameters that belong to no layer torch-pruning knows (ConvNeXt's layer scale), pruned along their
    only dimension; the spec's resize transform records their lengths."""
    return [(p, 0) for m in model.modules() if not layer_attrs(m) for p in m.parameters(recurse=False) if p.dim() == 1]


def check_runs(model: nn.Module, example: torch.Tensor, doing: str) -> None:
    """Run `model` on `example`; if it fails, raise a ConfigError naming the innermost module that was running."""
    names = {m: name for name, m in model.named_modules()}
    running: list[str] = []

    def leave(*_) -> None:
        running.pop()

    hooks = [h for m in names
             for h in (m.register_forward_pre_hook(lambda m, _: running.append(names[m])), m.register_forward_hook(leave))]
    try:
        with evaluating(model):
            model(example)
    except Exception as e:
        where = running[-1] if running else ""
        what = f"module {where!r} ({type(model.get_submodule(where)).__name__})" if where else "the model's own forward"
        raise ConfigError(f"{doing}: {what} fails with {type(e).__name__}: {e}. Exclude the layers that feed it (exclude keeps "
                          f"a layer's output channels) or make its shapes follow its input") from None
    finally:
        for h in hooks:
            h.remove()


def trial(model: nn.Module, example: torch.Tensor, ignored: list[str], ratio: float, round_to: int,
          round_to_min: Optional[int] = None, layer_ratios: Optional[dict[str, float]] = None) -> nn.Module:
    """A copy of `model` pruned to `ratio` (and `layer_ratios`, see `make_pruner`) in one step, checked to run.
    Per-layer channel counts do not depend on the importance criterion, so this predicts the shapes a gradual schedule
    ending there gives."""
    pruned = copy.deepcopy(model)
    if ratio > 0:
        make_pruner(pruned, example, ignored, [ratio], "l1", round_to, round_to_min, layer_ratios).step()
        check_runs(pruned, example, "the model fails after channel pruning")
    return pruned


def shapes_for(model: nn.Module, example: torch.Tensor, ignored: list[str], dropped: list[str], round_to: int,
               goal: Optional[Goal], ratio: Optional[float], round_to_min: Optional[int] = None,
               fill: bool = True) -> tuple[float, dict[str, float], nn.Module]:
    """The channel ratio, the per-group ratios that differ from it, and a pruned copy with the shapes they give, for
    `model` without the `dropped` blocks: the smallest ratio that meets `goal` (then, with `fill`, the budget its
    rounding leaves filled by `fill_budget`), or the given `ratio`. A goal no ratio meets, or a ratio that changes
    nothing, is a ConfigError naming the layers that set the floor."""
    shallow = remove_modules(copy.deepcopy(model), dropped)
    kept = [n for n in ignored if not any(nested(n, d) for d in dropped)]
    shrink = lambda r: trial(shallow, example, kept, r, round_to, round_to_min)  # noqa: E731
    layer_ratios: dict[str, float] = {}
    if goal is None:
        pruned = shrink(ratio)
    else:
        ratio, pruned = smallest_ratio(shrink, goal)
        if not goal.met(pruned):
            raise ConfigError(f"{goal.key} {goal.value:g} cannot be reached: removing {MAX_RATIO:.0%} of each layer's "
                              f"channels still gives {goal.measure(pruned):.4g}. "
                              + floor_report(shallow, pruned, kept, round_to, round_to_min, tuple(example.shape[1:])))
        if fill and ratio > 0:
            layer_ratios, pruned = fill_budget(shallow, pruned, example, kept, goal, ratio, round_to, round_to_min)
    if ratio > 0 and not dropped and shape_attrs(pruned) == shape_attrs(model):
        raise ConfigError(f"removing {ratio:.1%} of each layer's channels changes no layer: raise the ratio, lower round_to "
                          f"({round_to}), or check that torch-pruning can follow the model (no torch.no_grad in forward)")
    return ratio, layer_ratios, pruned


def fill_budget(model: nn.Module, pruned: nn.Module, example: torch.Tensor, ignored: list[str], goal: Goal, ratio: float,
                round_to: int, round_to_min: Optional[int] = None) -> tuple[dict[str, float], nn.Module]:
    """Spend what rounding to the alignment leaves of `goal`: `pruned` is `model` cut by the uniform `ratio`; widen one
    channel group at a time by one alignment unit, the group that keeps the smallest share of its channels first, while
    the goal still holds. A group that does not fit once never fits later (widening others only adds cost), so this
    takes one trial per widening plus one per group. Returns ({root layer: ratio} of the widened groups, their model)."""
    names = {m: n for n, m in model.named_modules()}
    pruner = make_pruner(model, example, ignored, [ratio], "l1", round_to, round_to_min)
    roots = [names[group[0][0].target.module]
             for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types)]
    full = {r: out_width(shape_attrs(model)[r]) for r in roots}
    keep = {r: out_width(shape_attrs(pruned)[r]) for r in roots}
    open_roots, layer_ratios = set(roots), {}
    while open_roots:
        root = min(open_roots, key=lambda r: (keep[r] / full[r], r))
        wider = min(full[root], keep[root] + alignment(keep[root], round_to, round_to_min))
        # half a channel over, so that torch-pruning's int() of the kept count lands on `wider`, not one below
        proposal = {**layer_ratios, root: max(0.0, 1 - (wider + 0.5) / full[root])}
        candidate = trial(model, example, ignored, ratio, round_to, round_to_min, proposal)
        width = out_width(shape_attrs(candidate)[root])
        if width <= keep[root] or not goal.met(candidate):
            open_roots.discard(root)
            continue
        layer_ratios, keep[root], pruned = proposal, width, candidate
    return layer_ratios, pruned


def floor_report(model: nn.Module, pruned: nn.Module, ignored: list[str], round_to: int, round_to_min: Optional[int],
                 input_shape: tuple[int, ...]) -> str:
    """Which layers of `pruned` (the most-pruned copy of `model`) kept half or more of their output channels, why, and
    their share of its MACs; what would lift the floor."""
    before, after = shape_attrs(model), shape_attrs(pruned)
    macs = {c.name: c.macs for c in layer_costs(pruned, input_shape)}
    total = sum(macs.values()) or 1
    stuck = sorted((n for n in after if n in macs and out_width(after[n]) >= out_width(before[n]) / 2), key=lambda n: -macs[n])
    if not stuck:
        return (f"Every layer is down to its alignment ({round_to} channels{f', {round_to_min} at or below it' if round_to_min else ''}); "
                f"lower round_to or set round_to_min, or remove blocks (drop_blocks)")

    def why(name: str) -> str:
        channels, module = out_width(after[name]), model.get_submodule(name)
        floor = alignment(channels, round_to, round_to_min)
        if name in ignored:
            return "excluded"
        if channels <= floor:
            return f"at the alignment of {floor} channels"
        if is_grouped_conv(module):
            return (f"grouped convolution with {module.groups} groups: keeps a multiple of {math.lcm(module.groups, floor)} "
                    f"channels, the same in every group")
        return "coupled to a layer that keeps its channels"

    shown = ", ".join(f"{n} ({why(n)}, {out_width(before[n])} -> {out_width(after[n])} channels, {macs[n] / total:.0%} of the MACs)"
                      for n in stuck[:5])
    share = sum(macs[n] for n in stuck) / total
    return (f"Layers that keep half or more of their channels hold {share:.0%} of what remains: {shown}"
            f"{f' and {len(stuck) - 5} more' if len(stuck) > 5 else ''}. To lift the floor: lower round_to or set "
            f"round_to_min for layers at the alignment, take layers out of exclude, remove blocks (drop_blocks), or use "
            f"method magnitude or nm")


def schedule_channels(trainer: Trainer, model: nn.Module, example: torch.Tensor, ignored: list[str], dropped: list[str],
                      ratio: float, schedule: ScheduleConfig, importance: str, round_to: int,
                      round_to_min: Optional[int] = None, layer_ratios: Optional[dict[str, float]] = None) -> list[list]:
    """Put the pruning on `trainer`: `dropped` blocks fade into the identity and channels shrink to `ratio` (the groups
    in `layer_ratios` to theirs), both on `schedule`. Returns the list the channel pruner fills with [step, ratio] as it
    applies them."""
    total = trainer.total_steps
    if dropped:  # from 1 (kept) to 0 (gone) along the schedule
        done = schedule.ramp(total)
        trainer.callbacks.append(BlockDropping(model, dropped, lambda step: 1.0 - done(step)))
    events = schedule.events(ratio, total)
    if not events:
        return []
    callback = ChannelPruning(make_pruner(model, example, ignored, [v for _, v in events], importance, round_to, round_to_min,
                                          layer_ratios), events)
    trainer.callbacks.append(callback)
    return callback.applied


def channel_sparsity(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], layers: list[str]) -> dict[str, float]:
    """Share of each layer's output channels removed (1.0 for a layer that is gone), from `shape_attrs` records."""
    return {n: 1 - out_width(after[n]) / out_width(before[n]) if n in after else 1.0 for n in layers}


def narrower_than(shapes: dict[str, dict[str, int]], scope: list[str], round_to: int) -> list[str]:
    """The layers in scope whose output is already narrower than the alignment (from `shape_attrs`): they cannot
    shrink unless round_to_min lowers it for them."""
    return [n for n in scope if n in shapes and out_width(shapes[n]) < round_to]


def check_rebuilds(pruned: nn.Module, spec: ModelSpec) -> None:
    """Raise ConfigError unless `build_model(spec)` gives every tensor of `pruned` its shape."""
    rebuilt = build_model(spec).state_dict()
    wrong = [f"{k} {tuple(t.shape)}" for k, t in pruned.state_dict().items() if k not in rebuilt or rebuilt[k].shape != t.shape]
    if wrong:
        raise ConfigError(f"the channel-pruned model cannot be rebuilt from its spec (only conv, linear, batch and group norm "
                          f"layers are resized): {', '.join(wrong[:5])}; exclude the layers that feed these tensors")


class ChannelPruning(Callback):
    """Steps the pruner at the schedule's training steps, then tells the trainer its tensors changed (new optimizer
    groups; momentum restarts)."""

    def __init__(self, pruner: AlignedPruner, events: list[Event]):
        self.pruner, self.events = pruner, dict(events)
        self.applied: list[list] = []  # [step, channel ratio] as applied

    def on_fit_start(self, trainer: Trainer) -> None:
        self.step(trainer)

    def on_step_end(self, trainer: Trainer) -> None:
        self.step(trainer)

    def step(self, trainer: Trainer) -> None:
        ratio = self.events.get(trainer.global_step)
        if ratio is None:
            return
        if trainer.global_step == 0 and isinstance(self.pruner.importance, tp.importance.GroupTaylorImportance):
            batch = Batch(*(t.to(trainer.device) for t in next(iter(trainer.loader))))
            trainer.loss_fn(trainer.model(batch.x), batch).backward()  # Taylor importance needs gradients
        was_training = trainer.model.training
        self.pruner.step()
        trainer.model.train(was_training)
        trainer.structure_changed()
        self.applied.append([trainer.global_step, ratio])
