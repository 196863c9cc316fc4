"""Model size and cost: parameters, non-zeros, MACs, bytes, sparsity."""
from __future__ import annotations

import torch
from torch import nn


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one example (convolutions and linear layers)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _, out):
        nonlocal total
        total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal total
        total += out[0].numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(total)


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
