"""Model size and cost: parameters, non-zeros, MACs, bytes, sparsity, and per-layer costs for the cost model."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from .training import evaluating


@dataclass(frozen=True)
class LayerCost:
    """One layer's work for a single example."""

    name: str
    macs: int
    weights: int
    inputs: int  # input activation elements
    outputs: int  # output activation elements


def layer_costs(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCost]:
    """Per-layer MACs, weight count and activation sizes of one forward pass on one example: every convolution
    (1-3 d, transposed, grouped), every linear layer (on any number of leading dimensions), and every module that
    declares the work it does itself with `own_macs(inputs, output) -> int` (e.g. a selective scan; its conv and
    linear children are counted on their own)."""
    costs: list[LayerCost] = []

    def hook(module: nn.Module, inputs, output):
        x, y = inputs[0][0], output[0]  # one example
        if isinstance(module, _ConvNd):
            per = (module.out_channels if module.transposed else module.in_channels) // module.groups
            macs = (x if module.transposed else y).numel() * per * math.prod(module.kernel_size)
            weights = module.weight.numel()
        elif isinstance(module, nn.Linear):
            macs, weights = y.numel() * module.in_features, module.weight.numel()
        else:
            macs, weights = int(module.own_macs(inputs, output)), sum(p.numel() for p in module.parameters(recurse=False))
        costs.append(LayerCost(names[module], macs, weights, x.numel(), y.numel()))

    names = {m: n for n, m in model.named_modules() if isinstance(m, (_ConvNd, nn.Linear)) or callable(getattr(m, "own_macs", None))}
    forward_with_hooks(model, input_shape, names, hook)
    return costs


def forward_with_hooks(model: nn.Module, input_shape: tuple[int, ...], modules: Iterable[nn.Module], hook: Callable) -> None:
    """One eval-mode, gradient-free forward pass on a zero example with `hook` on `modules` (training mode restored)."""
    hooks = [m.register_forward_hook(hook) for m in modules]
    try:
        with evaluating(model):
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one example (every layer `layer_costs` sees)."""
    return sum(c.macs for c in layer_costs(model, input_shape))


def model_metrics(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """Parameters, non-zero parameters, sparsity of weight tensors, fp32 size in bytes and MACs."""
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(p.count_nonzero()) for p in model.parameters())
    weights = [p for p in model.parameters() if p.dim() > 1]
    weight_count = sum(p.numel() for p in weights)
    weight_zeros = sum(p.numel() - int(p.count_nonzero()) for p in weights)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return {
        "params": params,
        "nonzero_params": nonzero,
        "sparsity": weight_zeros / weight_count if weight_count else 0.0,
        "size_bytes": size,
        "macs": count_macs(model, input_shape),
    }
