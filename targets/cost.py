"""Latency estimate for a target this machine cannot measure, from per-layer work against the profile's peaks.

Per layer, a compute term (2 x MACs at peak throughput) and a memory term (weights plus input and output activations
at peak bandwidth); each is divided by the profile's efficiency for it, and a fixed per-layer overhead is added.
`compress profile --calibrate` fits the two efficiencies and the overhead to measurements.
"""
from __future__ import annotations

from typing import Optional

from compress.errors import TargetError
from compress.metrics import LayerCost

from .profile import TargetProfile

BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "int8": 1}


def peak_terms_ms(layers: list[LayerCost], precision: str, profile: TargetProfile, batch: int = 1) -> tuple[float, float]:
    """(compute, memory) time of all layers at 100% of peak, in milliseconds."""
    if precision not in profile.peak_tops:
        raise TargetError(f"target {profile.name} has no peak_tops figure for {precision}; add one to the profile")
    macs = sum(layer.macs for layer in layers)
    values = sum(layer.weights + batch * (layer.inputs + layer.outputs) for layer in layers)
    compute = 2 * macs * batch / (profile.peak_tops[precision] * 1e12)
    memory = values * BYTES_PER_VALUE[precision] / (profile.memory_bandwidth_gbps * 1e9)
    return 1e3 * compute, 1e3 * memory


def estimate_latency_ms(layers: list[LayerCost], precision: str, profile: TargetProfile, batch: int = 1,
                        threads: Optional[int] = None) -> float:
    """Estimated latency on `profile` in milliseconds; on `threads` of a CPU profile's `cpu_cores` (default all),
    the compute term grows by cores / threads."""
    compute, memory = peak_terms_ms(layers, precision, profile, batch)
    if threads is not None and profile.cpu_cores:
        compute *= profile.cpu_cores / threads
    memory_efficiency = profile.memory_efficiency or profile.efficiency
    return compute / profile.efficiency + memory / memory_efficiency + len(layers) * profile.layer_overhead_us / 1e3


def estimate_memory_mb(layers: list[LayerCost], file_bytes: int, precision: str, batch: int = 1) -> float:
    """Run-time memory of an artifact: the weights file plus the largest layer's input and output activations."""
    activations = max((layer.inputs + layer.outputs for layer in layers), default=0) * batch
    return (file_bytes + activations * BYTES_PER_VALUE[precision]) / 1e6
