"""Weight masks: the layer scope, magnitude and N:M masks held through training by a `Callback`, and the N:M checker.
The schedule is in `schedule.py`; structured channel pruning in `channels.py`."""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Optional

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ...errors import ConfigError
from ...metrics import forward_with_hooks
from ...training import Callback, Trainer
from .schedule import Event

NM = Optional[tuple[int, int]]  # (n, m): at most n non-zeros in every m consecutive weights along the input dimension


def layers_in_order(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, nn.Module]:
    """Conv and linear layers in the order a forward pass first runs them (layers it never runs are left out)."""
    names = {m: name for name, m in model.named_modules() if isinstance(m, (_ConvNd, nn.Linear))}
    order: dict[str, nn.Module] = {}

    def seen(m: nn.Module, *_) -> None:
        order.setdefault(names[m], m)

    forward_with_hooks(model, input_shape, names, seen)
    return order


def select(names: list[str], include: list[str], exclude: list[str]) -> list[str]:
    """Names matching an `include` pattern and no `exclude` pattern; a pattern that matches no layer is an error."""
    for key, patterns in (("include", include), ("exclude", exclude)):
        for i, pattern in enumerate(patterns):
            if not any(fnmatchcase(n, pattern) for n in names):
                raise ConfigError(f"{key}[{i}] {pattern!r} matches no conv or linear layer; the layers are: {', '.join(names)}")
    return [n for n in names if any(fnmatchcase(n, p) for p in include) and not any(fnmatchcase(n, p) for p in exclude)]


def pruning_scope(names: list[str], include: list[str], exclude: Optional[list[str]], structured: bool) -> list[str]:
    """The layers a pruner may touch, in forward order: `include` minus `exclude`. The default `exclude` is the
    classifier (and the first layer for weight masks); a structured pruner may never take the classifier, whose
    outputs are the classes."""
    default = names[-1:] if structured else list(dict.fromkeys([names[0], names[-1]]))
    scope = select(names, include, default if exclude is None else exclude)
    if not scope:
        raise ConfigError("include/exclude leave no conv or linear layer to prune")
    if structured and names[-1] in scope:
        raise ConfigError(f"exclude: the output layer {names[-1]!r} would lose outputs (its channels are the classes); "
                          f"keep it excluded")
    return scope


def nm_rows(t: torch.Tensor, m: int) -> torch.Tensor:
    """`t` as rows of `m` consecutive values along the input dimension (dim 1), the layout of TensorRT's 2:4 kernels."""
    return t.movedim(1, -1).reshape(-1, m)


def nm_eligible(weight: torch.Tensor, m: int) -> bool:
    """Whether a weight can hold an N:M pattern: rank >= 2 and an input dimension divisible by `m`."""
    return weight.dim() >= 2 and weight.shape[1] % m == 0


def follows_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every `m` consecutive weights along the input dimension hold at most `n` non-zeros."""
    return bool((nm_rows(weight.detach(), m) != 0).sum(1).le(n).all())


def prune_scores(weight: torch.Tensor, keep: torch.Tensor, nm: NM) -> torch.Tensor:
    """Magnitudes, with masked weights ranked first (-1) and, for N:M, the `n` largest of each group protected (+inf)."""
    score = weight.detach().abs().masked_fill(~keep, -1.0)
    if nm is None:
        return score
    n, m = nm
    grouped = score.movedim(1, -1)
    rows = grouped.reshape(-1, m)
    rows = rows.scatter(1, rows.topk(n, dim=1).indices, float("inf"))
    return rows.reshape(grouped.shape).movedim(-1, 1)


def magnitude_masks(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], sparsity: float,
                    global_ranking: bool = False, nm: NM = None) -> dict[str, torch.Tensor]:
    """Keep-masks that zero the `sparsity` share of smallest weights, per layer or ranked across all layers; masked
    weights stay masked. With `nm`, only each group's m-n smallest can go, so sparsity (m-n)/m is exactly N:M."""
    scores = {name: prune_scores(w, masks[name], nm) for name, w in weights.items()}
    scopes = [scores] if global_ranking else [{name: s} for name, s in scores.items()]
    new = {}
    for scope in scopes:
        flat = torch.cat([s.flatten() for s in scope.values()])
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[flat.topk(round(sparsity * flat.numel()), largest=False).indices] = False
        for (name, s), k in zip(scope.items(), keep.split([s.numel() for s in scope.values()])):
            new[name] = k.view_as(s)
    return new


def layer_sparsity(layers: dict[str, nn.Module]) -> dict[str, float]:
    """Share of zero weights in each layer."""
    return {name: 1 - int(m.weight.count_nonzero()) / m.weight.numel() for name, m in layers.items()}


def nm_violations(layers: dict[str, nn.Module], n: int, m: int) -> list[str]:
    """Eligible layers whose weights break the N:M pattern."""
    return [name for name, layer in layers.items() if nm_eligible(layer.weight, m) and not follows_nm(layer.weight, n, m)]


class MaskPruning(Callback):
    """Raises the masks' sparsity at the schedule's steps and keeps masked weights exactly zero through every
    optimizer step: gradients are masked, optimizer state (momentum, Adam moments) is cleared where a mask grows,
    and the weights are masked again after each step, so weight decay cannot revive them either."""

    def __init__(self, layers: dict[str, nn.Module], events: list[Event], global_ranking: bool = False, nm: NM = None):
        self.weights = {name: m.weight for name, m in layers.items()}
        self.masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in self.weights.items()}
        self.events, self.global_ranking, self.nm = dict(events), global_ranking, nm
        self.applied: list[list] = []  # [step, sparsity] as applied

    def on_fit_start(self, trainer: Trainer) -> None:
        self.step(trainer)

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        for name, w in self.weights.items():
            if w.grad is not None:
                w.grad.mul_(self.masks[name])

    def on_step_end(self, trainer: Trainer) -> None:
        self.step(trainer)

    @torch.no_grad()
    def step(self, trainer: Trainer) -> None:
        sparsity = self.events.get(trainer.global_step)
        if sparsity is not None:
            self.masks = magnitude_masks(self.weights, self.masks, sparsity, self.global_ranking, self.nm)
            self.applied.append([trainer.global_step, sparsity])
            for name, w in self.weights.items():
                for state in trainer.optimizer.state.get(w, {}).values():
                    if torch.is_tensor(state) and state.shape == w.shape:
                        state.mul_(self.masks[name])
        for name, w in self.weights.items():
            w.mul_(self.masks[name])
