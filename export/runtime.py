"""The ONNX Runtime settings a deployed file runs with: intra-op threads, inter-op threads and execution mode.

On a small CPU they move latency as much as a compression stage does (docs/benchmarks.md), so they are measured
where the file runs (a host target, or `compress profile` on the device) and otherwise estimated from the target
profile's core count with the cost model; the choice is recorded beside the deployed artifact.
"""
from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Hashable, Optional

import numpy as np

from .validate import ort_session, timed_runs_ms

if TYPE_CHECKING:
    from compress.targets import TargetProfile

ROUNDS = 5  # alternating rounds of a sweep: machine noise then hits every setting alike
EQUAL = 0.05  # latencies within 5% count as equal when a setting is chosen (run-to-run noise on a small CPU)


@dataclass(frozen=True)
class RuntimeSetting:
    """One ONNX Runtime CPU configuration; `parallel` runs independent nodes at once on the inter-op threads."""

    intra_op_threads: int
    inter_op_threads: int = 1
    parallel: bool = False

    @property
    def label(self) -> str:
        threads = f"{self.intra_op_threads} thread{'s' if self.intra_op_threads > 1 else ''}"
        return f"{threads} x {self.inter_op_threads} inter-op, parallel" if self.parallel else threads

    def to_dict(self) -> dict:
        return {"label": self.label, "intra_op_num_threads": self.intra_op_threads,
                "inter_op_num_threads": self.inter_op_threads,
                "execution_mode": "parallel" if self.parallel else "sequential"}

    def session_options(self):
        """`onnxruntime.SessionOptions` for this setting."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if self.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        return options


def candidate_settings(cores: int, threads: Optional[list[int]] = None) -> list[RuntimeSetting]:
    """The given intra-op thread counts in sequential mode; by default every count from 1 to `cores` and, with two
    or more cores, the parallel mode with the cores shared between two inter-op threads (more would oversubscribe)."""
    if threads:
        return [RuntimeSetting(t) for t in dict.fromkeys(threads)]
    settings = [RuntimeSetting(t) for t in range(1, cores + 1)]
    return settings + ([RuntimeSetting(max(1, cores // 2), 2, parallel=True)] if cores >= 2 else [])


def sweep_cores(target_cores: Optional[int]) -> int:
    """The thread counts a sweep on this machine covers: the target's cores, but no more than this machine has."""
    here = os.cpu_count() or 1
    return min(target_cores or here, here)


def settings_for(target: "TargetProfile", threads: Optional[list[int]] = None) -> list[Optional[RuntimeSetting]]:
    """The runtime settings to measure on this machine for `target`: a thread sweep on a CPU target, the runtime's
    defaults (None) where a GPU runs the graph."""
    if target.device_class != "cpu":
        return [None]
    return candidate_settings(sweep_cores(target.cpu_cores), threads)


def split_runs(runs: int) -> tuple[int, int]:
    """(calls per round, rounds) that spend at least `runs` timed calls in up to `ROUNDS` alternating rounds."""
    rounds = min(ROUNDS, runs)
    return math.ceil(runs / rounds), rounds


def alternating_rounds(sessions: dict[Hashable, object], examples: dict[int, np.ndarray], runs: int,
                       rounds: int = ROUNDS, warmup: int = 3) -> dict[Hashable, dict[int, list[list[float]]]]:
    """Wall times (ms) of `runs` calls per round of every session at every batch size (`examples`: batch -> input),
    the sessions taking turns round by round so that a slow spell of the machine hits them alike."""
    times = {key: {batch: [] for batch in examples} for key in sessions}
    for _ in range(rounds):
        for batch, x in examples.items():
            for key, session in sessions.items():
                times[key][batch].append(timed_runs_ms(session, {session.get_inputs()[0].name: x}, runs, warmup))
    return times


def example_inputs(shape: list, batches: list[int], seed: int = 0) -> dict[int, np.ndarray]:
    """Random float32 inputs per batch size for a graph input of `shape` (its symbolic axes take the batch)."""
    rng = np.random.default_rng(seed)
    return {b: rng.standard_normal([b if not isinstance(d, int) else d for d in shape]).astype(np.float32) for b in batches}


def percentiles(times_ms: list[float], batch: int) -> dict[str, float]:
    """p50 / p90 / p99 latency and the throughput at p50 of one batch size's timed runs."""
    ordered = sorted(times_ms)
    pick = lambda q: ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]  # noqa: E731
    p50 = statistics.median(ordered)
    return {"p50_ms": p50, "p90_ms": pick(0.9), "p99_ms": pick(0.99), "throughput_per_s": 1e3 * batch / p50}


def sweep_settings(path: str, providers: list[str], settings: list[Optional[RuntimeSetting]], batches: list[int],
                   runs: int, warmup: int) -> dict:
    """Latency percentiles of one ONNX file under each setting (None: the runtime's defaults) and batch size, over
    `runs` timed calls split into alternating rounds, and the fastest setting per batch size (by p50)."""
    sessions = {i: ort_session(Path(path), setting, providers) for i, setting in enumerate(settings)}
    first = next(iter(sessions.values()))
    times = alternating_rounds(sessions, example_inputs(first.get_inputs()[0].shape, batches), *split_runs(runs), warmup)
    rows = [{**(s.to_dict() if s else {"label": "default"}),
             "batches": {str(b): percentiles([t for r in times[i][b] for t in r], b) for b in batches}}
            for i, s in enumerate(settings)]
    fastest = {str(b): min(rows, key=lambda row: row["batches"][str(b)]["p50_ms"])["label"] for b in batches}
    return {"provider": first.get_providers()[0], "settings": rows, "fastest": fastest}


def measured_choice(sweep: dict, where: str) -> dict:
    """The setting to deploy from a sweep (`sweep_settings`): the fastest at the smallest batch size, the one the
    deploy choice ranks artifacts by, where settings within `EQUAL` of it count as equal and the faster of those at
    the largest batch size wins. The record keeps every setting's p50 and how much slower the others ran."""
    batches = sorted(sweep["fastest"], key=int)
    rows = {row["label"]: row for row in sweep["settings"]}
    p50 = lambda label, batch: rows[label]["batches"][batch]["p50_ms"]  # noqa: E731
    first, last = batches[0], batches[-1]
    near = [label for label in rows if p50(label, first) <= (1 + EQUAL) * p50(sweep["fastest"][first], first)]
    best = min(near, key=lambda label: p50(label, last))
    slower = [f"{label} {p50(label, b) / p50(best, b):.2f}x slower at batch {b}" for b in dict.fromkeys([first, last])
              for label in rows if label != best]
    tie = (f"; within {EQUAL:.0%} at batch {first} the faster at batch {last} wins" if len(near) > 1 and last != first else "")
    return {"source": "measured", "provider": sweep["provider"],
            "setting": {k: v for k, v in rows[best].items() if k != "batches"},
            "latency_ms": {b: {label: p50(label, b) for label in rows} for b in batches}, "fastest": sweep["fastest"],
            "reason": f"{best} ({p50(best, first):.3g} ms at batch {first}), the fastest of {len(rows)} ONNX Runtime "
                      f"settings {where}{tie}" + (f"; {', '.join(slower)}" if slower else "")}


def estimated_choice(path: Path, precision: str, target: "TargetProfile") -> dict:
    """The setting for a target this machine is not: every core of a CPU target, with the cost model's batch-1
    estimate on one thread and on all of them; nothing to set for a GPU target."""
    from compress.targets.cost import estimate_latency_ms
    from compress.targets.profiling import onnx_layer_costs

    provider = target.execution_providers[0] if target.runtime == "onnxruntime" else "TensorRT"
    if target.device_class != "cpu":
        return {"source": "not applicable", "provider": provider, "setting": None,
                "reason": f"{target.name} runs the model on its GPU ({provider}); ONNX Runtime's CPU thread settings "
                          f"do not set its latency"}
    if target.cpu_cores is None:
        return {"source": "estimated", "provider": provider, "setting": None,
                "reason": f"{target.name}'s profile gives no cpu_cores, so ONNX Runtime keeps its default (a thread per "
                          f"physical core); add cpu_cores to the profile, or measure with `compress profile` on the device"}
    cores, layers = target.cpu_cores, onnx_layer_costs(path)
    estimate = {RuntimeSetting(t).label: estimate_latency_ms(layers, precision, target, threads=t) for t in (1, cores)}
    all_cores = RuntimeSetting(cores)
    return {"source": "estimated", "provider": provider, "setting": all_cores.to_dict(),
            "latency_ms": {"1": estimate}, "fastest": {"1": all_cores.label},
            "reason": f"estimated, not measured: {target.name} has {cores} cores, and the cost model puts batch 1 at "
                      f"{estimate[all_cores.label]:.3g} ms on {cores} threads against {estimate['1 thread']:.3g} ms on "
                      f"one (its compute term scales with the threads, the rest does not); `compress profile` on the "
                      f"device measures every setting"}


def runtime_choice(deploy: dict, target: "TargetProfile", batches: list[int], runs: int) -> dict:
    """The runtime settings that go with a deployed ONNX file: swept on this machine for a host target (`runs`
    timed calls per setting and batch size), estimated otherwise."""
    if not target.host:
        return estimated_choice(Path(deploy["path"]), deploy["precision"], target)
    sweep = sweep_settings(deploy["path"], ["CPUExecutionProvider"], settings_for(target), batches, runs, warmup=3)
    return measured_choice(sweep, "on this machine")
