"""`host`: a profile of this machine, detected at run time; latencies measured here are the target's own."""
from __future__ import annotations

import os
import platform
from pathlib import Path

from .profile import TargetProfile


def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (empty where it does not exist)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_ghz() -> float:
    try:
        mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("cpu MHz")]
        return max(mhz) / 1000 if mhz else 2.5
    except (OSError, ValueError):
        return 2.5


def memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 8.0


def detect_host() -> TargetProfile:
    """This machine's CPU as an ONNX Runtime target: SIMD width and int8 dot-product support set the peaks."""
    flags, cores, ghz = cpu_flags(), os.cpu_count() or 1, cpu_ghz()
    if "avx512f" in flags:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags:
        lanes, isa = 8, "AVX2"
    else:
        lanes, isa = 4, "NEON/SSE"
    int8_gain = 4 if flags & {"avx512_vnni", "avx_vnni", "asimddp"} else 2
    fp32 = cores * lanes * 2 * 2 * ghz / 1e3  # two FMA pipes, 2 ops per FMA, tera-ops/s
    return TargetProfile(
        name="host",
        description=f"this machine: {cores} cores, {isa}{' VNNI' if int8_gain == 4 else ''}, {platform.machine()} (ONNX Runtime CPU)",
        device_class="cpu", runtime="onnxruntime", execution_providers=["CPUExecutionProvider"],
        precisions=["fp32", "int8"], preferred_precisions=["int8", "fp32"],
        peak_tops={"fp32": round(fp32, 3), "int8": round(fp32 * int8_gain, 3)},
        efficiency=0.2, layer_overhead_us=3, memory_bandwidth_gbps=10.0 * cores, memory_gb=round(memory_gb(), 1), cpu_cores=cores,
        channel_alignment=lanes, int8_min_out_channels=16 if lanes > 4 else 0,
        int8_min_in_channels=4 if lanes > 4 else 0, max_opset=21,
        budgets={"max_accuracy_drop": 0.01}, host=True,
    )
