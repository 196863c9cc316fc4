"""Measured, not only counted: models' ONNX Runtime latencies on this machine and their parity with torch, from the
same fp32 ONNX export the pipeline makes."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..export.onnx import DEFAULT_OPSET, export_onnx
from ..export.runtime import alternating_rounds, split_runs
from ..export.validate import ort_session, run_session


def onnx_latencies(models: dict[str, nn.Module], x: torch.Tensor, folder: Path, batch_sizes: Sequence[int],
                   runs: int) -> dict[str, dict]:
    """Export each model (moved to the CPU) to fp32 ONNX in `folder` and time it in ONNX Runtime on this machine:
    `runs` calls per batch size, split into alternating rounds in which the models take turns, so that a slow spell
    of the machine hits them alike and their latencies compare. Per model {"latency_ms": {batch: the median of its
    rounds' medians}, "max_abs_diff": ONNX Runtime vs torch on `x`}; batches larger than `x` repeat its first example."""
    sessions, diffs = {}, {}
    for name, model in models.items():
        model = model.cpu().eval()
        sessions[name] = ort_session(export_onnx(model, tuple(x.shape[1:]), folder / f"{name}.onnx", DEFAULT_OPSET, "torchscript"))
        with torch.no_grad():
            diffs[name] = float((run_session(sessions[name], x, 512) - model(x)).abs().max())
    examples = {b: (x[:b] if len(x) >= b else x[:1].expand(b, *x.shape[1:])).contiguous().numpy() for b in batch_sizes}
    times = alternating_rounds(sessions, examples, *split_runs(runs))
    return {name: {"latency_ms": {str(b): statistics.median(statistics.median(r) for r in times[name][b]) for b in batch_sizes},
                   "max_abs_diff": diffs[name]} for name in models}
