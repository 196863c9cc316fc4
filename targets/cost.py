"""Roofline latency estimate for targets this machine cannot measure."""
from __future__ import annotations

from .profile import TargetProfile

BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "int8": 1}


def estimate_latency_ms(macs: int, params: int, precision: str, profile: TargetProfile, batch: int = 1) -> float:
    """max(compute time, weight-traffic time) at the profile's peak scaled by its efficiency, in milliseconds."""
    peak = profile.peak_tops.get(precision)
    if peak is None:
        raise ValueError(f"target {profile.name} does not run {precision}")
    compute_s = 2 * macs * batch / (peak * 1e12 * profile.efficiency)
    memory_s = params * BYTES_PER_VALUE[precision] / (profile.memory_bandwidth_gbps * 1e9 * profile.efficiency)
    return 1e3 * max(compute_s, memory_s)
