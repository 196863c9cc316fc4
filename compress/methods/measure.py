"""Measured, not only counted: a model's ONNX Runtime latency on this machine and its parity with torch, from the
same fp32 ONNX export the pipeline makes."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..export.onnx import DEFAULT_OPSET, export_onnx
from ..export.runtime import ROUNDS, alternating_rounds
from ..export.validate import median_latency_ms, ort_session, run_session


def onnx_latency(model: nn.Module, x: torch.Tensor, path: Path, batch_sizes: Sequence[int], runs: int) -> dict:
    """Export `model` to `path`, then {"latency_ms": {batch: median ms}, "max_abs_diff": ONNX Runtime vs torch on
    `x`}; batches larger than `x` repeat its first example."""
    export_onnx(model, tuple(x.shape[1:]), path, DEFAULT_OPSET, "torchscript")
    session = ort_session(path)
    with torch.no_grad():
        reference = model.cpu().eval()(x)
    diff = float((run_session(session, x, 512) - reference).abs().max())
    latency = {str(b): median_latency_ms(session, x[:b] if len(x) >= b else x[:1].expand(b, *x.shape[1:]).contiguous(), runs)
               for b in batch_sizes}
    return {"latency_ms": latency, "max_abs_diff": diff}


def onnx_latencies(models: dict[str, nn.Module], x: torch.Tensor, folder: Path, batch: int, runs: int,
                   rounds: int = ROUNDS) -> dict[str, float]:
    """Latency (ms) at `batch` of each model as fp32 ONNX (exported into `folder`, models left on the CPU) in ONNX
    Runtime on this machine. The models take turns over `rounds` rounds of `runs` calls, so that a slow spell of the
    machine hits them alike and their latencies compare; each is the median of its rounds' medians."""
    sessions = {name: ort_session(export_onnx(model, tuple(x.shape[1:]), folder / f"{name}.onnx", DEFAULT_OPSET, "torchscript"))
                for name, model in models.items()}
    example = (x[:batch] if len(x) >= batch else x[:1].expand(batch, *x.shape[1:])).contiguous().numpy()
    times = alternating_rounds(sessions, {batch: example}, runs, rounds)
    return {name: statistics.median(statistics.median(r) for r in times[name][batch]) for name in models}
