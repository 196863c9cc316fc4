"""Roofline latency estimate for a target this machine cannot measure: per layer, compute time or memory time."""
from __future__ import annotations

from compress.metrics import LayerCost

from .profile import TargetProfile

BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "int8": 1}


def layer_seconds_at_peak(layer: LayerCost, precision: str, profile: TargetProfile, batch: int) -> float:
    """The layer's time at 100% of peak: the larger of its compute time and its memory-traffic time."""
    compute = 2 * layer.macs * batch / (profile.peak_tops[precision] * 1e12)
    traffic = (layer.weights + batch * (layer.inputs + layer.outputs)) * BYTES_PER_VALUE[precision]
    return max(compute, traffic / (profile.memory_bandwidth_gbps * 1e9))


def roofline_ms(layers: list[LayerCost], precision: str, profile: TargetProfile, batch: int = 1) -> float:
    """Sum of per-layer roofline times at 100% of peak, in milliseconds (no efficiency, no overhead)."""
    if precision not in profile.peak_tops:
        raise ValueError(f"target {profile.name} has no peak figure for {precision}")
    return 1e3 * sum(layer_seconds_at_peak(layer, precision, profile, batch) for layer in layers)


def estimate_latency_ms(layers: list[LayerCost], precision: str, profile: TargetProfile, batch: int = 1) -> float:
    """Estimated latency on `profile`: roofline time divided by the profile's efficiency, plus per-layer overhead."""
    return roofline_ms(layers, precision, profile, batch) / profile.efficiency + len(layers) * profile.layer_overhead_us / 1e3
