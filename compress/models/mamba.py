"""mamba_s: a vision Mamba classifier in pure PyTorch (selective state-space blocks over patch tokens), and
mamba_ensemble: several of them averaged, exported as one graph.

The selective scan has three forms that compute the same thing (a test holds them to 1e-5):
- `sequential`: the reference, one token at a time, discretising as it goes;
- `parallel`: training, a log-depth (odd-even) scan of the linear recurrence, without in-place writes;
- `export`: the recurrence unrolled over the static token count, time-major, so the graph holds few nodes: one Split
  per tensor, one Mul and one Add per token, and MatMuls for (Δ·u)·B and the read-out C·h; only Transpose, Split,
  Mul, Add, Exp, MatMul and Concat-like operators.
ONNX export always uses the export form (`torch.onnx.is_in_onnx_export()`); `scan` chooses the one used otherwise.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import MODELS

Scan = Literal["sequential", "parallel", "export"]
SCANS = ("sequential", "parallel", "export")
TINY = 1e-30  # decays and their products are kept above this: below it they would only add denormal floats, which
# are ~100x slower on CPUs, to a state they no longer change (float32 resolves 1e-7 relative)


def discretise(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-order hold: (exp(Δ·A), Δ·B·u) per token, channel and state, shape (batch, tokens, channels, state).

    u, Δ: (batch, tokens, channels); A: (channels, state); B: (batch, tokens, state). B is discretised with the
    Euler rule Δ·B, as Mamba does."""
    return decay_of(delta, A), (delta * u).unsqueeze(-1) * B.unsqueeze(2)


def decay_of(delta: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """exp(Δ·A) per token, channel and state, kept above TINY: the zero-order-hold decay of every scan form."""
    return torch.exp(delta.unsqueeze(-1) * A).clamp_min(TINY)


def scan_sequential(u, delta, A, B, C) -> torch.Tensor:
    """Reference: h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, y_t = C_t · h_t, one token at a time."""
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    ys = []
    for t in range(u.shape[1]):
        decay, drive = discretise(u[:, t:t + 1], delta[:, t:t + 1], A, B[:, t:t + 1])
        h = decay[:, 0] * h + drive[:, 0]
        ys.append((h * C[:, t].unsqueeze(1)).sum(-1))
    return torch.stack(ys, 1)


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Every h_t of h_t = a_t h_{t-1} + b_t (h_{-1} = 0) along dim 1, by odd-even reduction: pairs of steps compose
    into one step of the half-length recurrence, solved recursively, and the even states follow from the odd ones.
    Depth ceil(log2 T), work about 2x the sequential loop, no in-place writes (so autograd and export both work)."""
    tokens = a.shape[1]
    if tokens == 1:
        return b
    if tokens % 2:  # an identity step (a = 1, b = 0) at the end
        a, b = F.pad(a, (0, 0, 0, 0, 0, 1), value=1.0), F.pad(b, (0, 0, 0, 0, 0, 1))
    a_even, a_odd, b_even, b_odd = a[:, 0::2], a[:, 1::2], b[:, 0::2], b[:, 1::2]
    h_odd = linear_scan((a_odd * a_even).clamp_min(TINY), a_odd * b_even + b_odd)
    h_even = b_even + a_even * F.pad(h_odd[:, :-1], (0, 0, 0, 0, 1, 0))
    return torch.stack([h_even, h_odd], 2).flatten(1, 2)[:, :tokens]


def scan_parallel(u, delta, A, B, C) -> torch.Tensor:
    """The training form: discretise every token at once, `linear_scan` the states, read out y_t = C_t · h_t."""
    decay, drive = discretise(u, delta, A, B)
    return (linear_scan(decay, drive) * C.unsqueeze(2)).sum(-1)


def scan_export(u, delta, A, B, C) -> torch.Tensor:
    """The recurrence unrolled over the (static) token count, written for a small ONNX graph: tokens first, so that
    one Split per tensor gives every token's slice; the outer product (Δ·u)·B and the read-out y_t = C_t · h_t of all
    tokens at once as MatMuls. (The earlier form, a Gather per token and tensor, broadcast products and a ReduceSum per
    token, had 2.2x the nodes and ran 1.3-1.6x slower in ONNX Runtime on bench/mamba.py's student-1.)"""
    u, delta, B, C = (t.transpose(0, 1) for t in (u, delta, B, C))  # (tokens, batch, ...)
    decays = decay_of(delta, A).split(1)
    drives = ((delta * u).unsqueeze(-1) @ B.unsqueeze(2)).split(1)
    states = [drives[0]]
    for decay, drive in zip(decays[1:], drives[1:]):
        states.append(decay * states[-1] + drive)
    return (torch.cat(states) @ C.unsqueeze(-1)).squeeze(-1).transpose(0, 1)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x); in ONNX export written relu(x) + log(1 + e^-|x|), which ONNX Runtime's vectorised Exp and Log run
    about 2x faster than its Softplus kernel."""
    if torch.onnx.is_in_onnx_export():
        return F.relu(x) + torch.log1p(torch.exp(-x.abs()))
    return F.softplus(x)


SCAN_FNS = {"sequential": scan_sequential, "parallel": scan_parallel, "export": scan_export}


class SelectiveScan(nn.Module):
    """y = scan(u, Δ, A, B, C) + D·u, with A = -exp(A_log) (S4D-real initialisation) and D the skip, per channel.

    Own MACs per example (`own_macs`), T tokens, E channels, N states: 4·T·E·N + 2·T·E, the work of the recurrent
    form: Δ·A, (Δ·u)·B, the state update a·h + b and the read-out C·h per state; Δ·u and D·u per channel. exp is
    not counted, nor the parallel form's extra log2(T) passes (training only)."""

    def __init__(self, channels: int, d_state: int, scan: Scan = "parallel"):
        super().__init__()
        self.d_state, self.scan = d_state, scan
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(channels, 1))
        self.D = nn.Parameter(torch.ones(channels))

    def forward(self, u: torch.Tensor, delta: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        mode = "export" if torch.onnx.is_in_onnx_export() else self.scan
        return SCAN_FNS[mode](u, delta, -torch.exp(self.A_log), B, C) + self.D * u

    def own_macs(self, inputs, output) -> int:
        tokens, channels = inputs[0].shape[1:]
        return 4 * tokens * channels * self.d_state + 2 * tokens * channels


class SSM(nn.Module):
    """Causal depthwise conv1d, SiLU, input-dependent Δ (softplus), B and C, then the selective scan, on (B, T, E)."""

    def __init__(self, channels: int, d_state: int, d_conv: int = 4, scan: Scan = "parallel"):
        super().__init__()
        self.dt_rank = math.ceil(channels / 16)
        self.conv1d = nn.Conv1d(channels, channels, d_conv, groups=channels, padding=d_conv - 1)
        self.x_proj = nn.Linear(channels, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, channels)
        self.scan = SelectiveScan(channels, d_state, scan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[1]
        u = F.silu(self.conv1d(x.transpose(1, 2))[..., :tokens].transpose(1, 2))  # causal: keep the first T outputs
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.scan.d_state, self.scan.d_state], dim=-1)
        return self.scan(u, softplus(self.dt_proj(dt)), B, C)


class MambaBlock(nn.Module):
    """Pre-norm residual Mamba block: x + out_proj(ssm(in_x) * silu(z)), (in_x, z) = in_proj(norm(x)); with
    `bidirectional`, a second SSM reads the tokens backwards and the two outputs are summed (Vision Mamba)."""

    def __init__(self, d_model: int, d_state: int, expand: int = 2, d_conv: int = 4, bidirectional: bool = False,
                 scan: Scan = "parallel"):
        super().__init__()
        inner = expand * d_model
        self.norm = nn.LayerNorm(d_model)
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=False)
        self.forward_ssm = SSM(inner, d_state, d_conv, scan)
        self.backward_ssm = SSM(inner, d_state, d_conv, scan) if bidirectional else None
        self.out_proj = nn.Linear(inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, z = self.in_proj(self.norm(x)).chunk(2, dim=-1)
        y = self.forward_ssm(u)
        if self.backward_ssm is not None:
            y = y + self.backward_ssm(u.flip(1)).flip(1)
        return x + self.out_proj(y * F.silu(z))


class MambaClassifier(nn.Module):
    """Patch embedding (a conv of stride `patch`) plus learned positions, `n_layers` Mamba blocks, final norm,
    mean over tokens, linear head. A 28x28 image with patch 4 gives 49 tokens."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, d_model: int = 64, n_layers: int = 4,
                 d_state: int = 16, expand: int = 2, patch: int = 4, image_size: Sequence[int] = (28, 28),
                 d_conv: int = 4, bidirectional: bool = False, scan: Scan = "parallel"):
        super().__init__()
        height, width = image_size
        if min(d_model, n_layers, d_state, expand, patch, d_conv) < 1:
            raise ValueError("d_model, n_layers, d_state, expand, patch and d_conv must be at least 1")
        if height % patch or width % patch:
            raise ValueError(f"patch {patch} does not divide the {height}x{width} image")
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {', '.join(SCANS)}, got {scan!r}")
        self.embed = nn.Conv2d(in_channels, d_model, patch, stride=patch)
        self.grid = (height // patch, width // patch)
        self.position = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], d_model))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.Sequential(*(MambaBlock(d_model, d_state, expand, d_conv, bidirectional, scan) for _ in range(n_layers)))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.embed(x)
        return self.head(self.norm(self.blocks(grid.flatten(2).transpose(1, 2) + self.positions(grid.shape[2:]))).mean(1))

    def positions(self, grid: Sequence[int]) -> torch.Tensor:
        """The learned positions, resized (bilinear) when the images are not `image_size`."""
        if tuple(grid) == self.grid:
            return self.position
        table = self.position.transpose(1, 2).reshape(1, -1, *self.grid)
        return F.interpolate(table, size=tuple(grid), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)


class Ensemble(nn.Module):
    """log of the weighted mean of the members' softmax: a proper logit vector whose argmax is the ensemble's vote."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = sum(w * torch.softmax(m(x), dim=-1) for w, m in zip(self.weights, self.members))
        return torch.log(probs.clamp_min(1e-12))


@MODELS.register("mamba_s")
def mamba_s(in_channels: int = 1, num_classes: int = 10, **kwargs) -> nn.Module:
    """A `MambaClassifier`; kwargs: d_model, n_layers, d_state, expand, patch, image_size, d_conv, bidirectional, scan."""
    return MambaClassifier(in_channels, num_classes, **kwargs)


@MODELS.register("mamba_ensemble")
def mamba_ensemble(in_channels: int = 1, num_classes: int = 10, members: Sequence[dict] = ({},),
                   weights: Sequence[float] | None = None) -> nn.Module:
    """An `Ensemble` of `mamba_s` models, one per kwargs dict in `members` (default: one default `mamba_s`); uniform
    `weights` by default."""
    if not members:
        raise ValueError("members: give at least one mamba_s kwargs dict")
    weights = weights or [1 / len(members)] * len(members)
    if len(weights) != len(members):
        raise ValueError(f"{len(weights)} weights for {len(members)} members")
    return Ensemble([MambaClassifier(in_channels, num_classes, **kw) for kw in members], weights)
