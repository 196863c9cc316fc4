"""Costs of every layer kind, counted by hand: convolutions of 1-3 dimensions, transposed and grouped ones, linear
layers on token sequences, and a module that declares its own work (as a selective scan does)."""
import pytest
import torch
from torch import nn

from compress.metrics import count_macs, layer_costs, model_metrics
from compress.targets import resolve
from compress.targets.cost import estimate_latency_ms


class Tokens(nn.Module):
    """(C, L) input -> (L, C) tokens."""

    def forward(self, x):
        return x.transpose(-1, -2)


class Scan(nn.Module):
    """A module with a weight of its own and work no conv or linear layer does: it declares both."""

    def __init__(self, width: int, state: int):
        super().__init__()
        self.decay = nn.Parameter(torch.ones(width, state))

    def forward(self, x):
        return x * self.decay.sum(1)

    def own_macs(self, inputs, output) -> int:
        length, width = output.shape[-2:]
        return length * width * self.decay.shape[1]


@pytest.mark.parametrize("layer, shape, macs", [
    (nn.Conv1d(4, 8, 3, padding=1), (4, 10), 10 * 8 * 4 * 3),
    (nn.Conv3d(2, 4, 3, padding=1), (2, 5, 5, 5), 4 * 125 * 2 * 27),
    (nn.ConvTranspose2d(4, 2, 2, stride=2), (4, 3, 3), 4 * 9 * 2 * 4),  # every input value reaches out/groups x kernel outputs
    (nn.Conv2d(8, 8, 3, padding=1, groups=8), (8, 4, 4), 8 * 16 * 1 * 9),
    (nn.Conv2d(8, 8, 3, padding=1, groups=2), (8, 4, 4), 8 * 16 * 4 * 9),
    (nn.Sequential(Tokens(), nn.Linear(6, 3)), (6, 5), 5 * 3 * 6),
])
def test_macs_of_every_layer_kind(layer, shape, macs):
    (cost,) = layer_costs(layer, shape)
    weight = next(m for m in layer.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))).weight
    assert cost.macs == macs and cost.weights == weight.numel() and cost.inputs == torch.Size(shape).numel()


def test_a_module_declares_its_own_cost_and_the_cost_model_sees_it():
    model = nn.Sequential(Tokens(), nn.Linear(4, 8), Scan(8, 16))
    costs = {c.name: c for c in layer_costs(model, (4, 10))}
    assert costs["1"].macs == 10 * 8 * 4 and costs["2"].macs == 10 * 8 * 16 and costs["2"].weights == 8 * 16
    assert count_macs(model, (4, 10)) == 10 * 8 * 4 + 10 * 8 * 16
    assert model_metrics(model, (4, 10))["params"] == 4 * 8 + 8 + 8 * 16
    target = resolve("jetson")
    without = estimate_latency_ms([costs["1"]], "fp16", target)
    assert estimate_latency_ms(list(costs.values()), "fp16", target) > without
