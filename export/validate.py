"""Check an exported file with ONNX Runtime: it loads, matches torch, keeps accuracy; time it on this machine."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from compress.atomic import sha256_file
from compress.data import Split
from compress.errors import ExportError

from . import Artifact

if TYPE_CHECKING:
    from .runtime import RuntimeSetting


def ort_session(path: Path, setting: Optional["RuntimeSetting"] = None, providers: Optional[list[str]] = None):
    """An ONNX Runtime session (CPU, with the runtime's default threads unless `setting` says otherwise); a graph the
    runtime cannot load is an ExportError naming the file."""
    import onnxruntime as ort

    if setting is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
    else:
        options = setting.session_options()
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        raise ExportError(f"{path}: ONNX Runtime cannot load the exported graph: {str(e).splitlines()[0]}") from None


def run_session(session, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: chunk.numpy()})[0] for chunk in x.split(batch_size)]
    return torch.from_numpy(np.concatenate(outs)).float()


def median_latency_ms(session, example: torch.Tensor, runs: int, warmup: int = 5) -> float:
    """Median wall time of one `session.run` on `example`, after warm-up runs."""
    return statistics.median(timed_runs_ms(session, {session.get_inputs()[0].name: example.numpy()}, runs, warmup))


def timed_runs_ms(session, feed: dict, runs: int, warmup: int) -> list[float]:
    """Wall times of `runs` calls of `session.run(feed)` after `warmup` untimed ones, in milliseconds."""
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def validate_artifact(path: Path, fmt: str, precision: str, reference_logits: torch.Tensor, val: Split,
                      reference_accuracy: float, batch_sizes: list[int], runs: int, eval_batch_size: int = 512) -> Artifact:
    """Parity with torch (max |logit difference|, top-1 agreement), validation accuracy, size, latency medians."""
    session = ort_session(path)
    logits = run_session(session, val.x, eval_batch_size)
    accuracy = float((logits.argmax(1) == val.y).float().mean())
    latency = {}
    for bs in batch_sizes:
        example = val.x[:bs] if len(val) >= bs else val.x[:1].expand(bs, *val.x.shape[1:]).contiguous()
        latency[str(bs)] = median_latency_ms(session, example, runs)
    return Artifact(
        format=fmt, precision=precision, path=str(path), size_bytes=path.stat().st_size, sha256=sha256_file(path),
        parity={"max_abs_diff": float((logits - reference_logits).abs().max()),
                "top1_agreement": float((logits.argmax(1) == reference_logits.argmax(1)).float().mean())},
        accuracy=accuracy, accuracy_drop=reference_accuracy - accuracy,
        latency_ms=latency, latency_provider="onnxruntime CPUExecutionProvider (this machine)",
    )
