"""Model size and cost: parameters, non-zeros, MACs, bytes, sparsity, and per-layer costs for the cost model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn


@dataclass(frozen=True)
class LayerCost:
    """One convolution or linear layer's work for a single example."""

    name: str
    macs: int
    weights: int
    inputs: int  # input activation elements
    outputs: int  # output activation elements


def layer_costs(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCost]:
    """Per-layer MACs, weight count and activation sizes of one forward pass on one example."""
    costs: list[LayerCost] = []

    def hook(module: nn.Module, inputs, output):
        if isinstance(module, nn.Conv2d):
            per_output = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        costs.append(LayerCost(names[module], output[0].numel() * per_output, module.weight.numel(),
                               inputs[0][0].numel(), output[0].numel()))

    names = {m: n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    forward_with_hooks(model, input_shape, names, hook)
    return costs


def forward_with_hooks(model: nn.Module, input_shape: tuple[int, ...], modules: Iterable[nn.Module], hook: Callable) -> None:
    """One eval-mode, gradient-free forward pass on a zero example with `hook` on `modules` (training mode restored)."""
    hooks = [m.register_forward_hook(hook) for m in modules]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one example (convolutions and linear layers)."""
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
