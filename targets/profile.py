"""The schema of a hardware target profile (YAML data; code branches on these fields, never on names)."""
from __future__ import annotations

import re
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, Field, PositiveFloat, PositiveInt, model_validator

from compress.config import MIN_OPSET, Name, Natural, Strict
from compress.errors import shown

Precision = Literal["fp32", "fp16", "int8"]
def version(value: str) -> str:
    """A software version such as 10, 10.3 or 8.6.1.6 (it is written into build_engine.sh)."""
    if not re.fullmatch(r"[0-9]{1,4}(\.[0-9]{1,4}){0,3}", value):
        raise ValueError(f"must be a version such as 10.3 (digits and dots), got {shown(value)}")
    return value


Version = Annotated[str, AfterValidator(version)]

# What each ONNX Runtime execution provider computes natively (TensorRT as a runtime runs all three).
PROVIDER_PRECISIONS = {
    "CPUExecutionProvider": {"fp32", "int8"},
    "XnnpackExecutionProvider": {"fp32", "fp16", "int8"},
    "CUDAExecutionProvider": {"fp32", "fp16", "int8"},
    "TensorrtExecutionProvider": {"fp32", "fp16", "int8"},
    "OpenVINOExecutionProvider": {"fp32", "fp16", "int8"},
}


class Budgets(Strict):
    """Limits an artifact must stay within to be deployable on the target; unset ones do not apply."""

    latency_ms: Optional[PositiveFloat] = Field(None, description="batch-1 latency budget")
    memory_mb: Optional[PositiveFloat] = Field(None, description="memory available to the model at run time")
    size_mb: Optional[PositiveFloat] = Field(None, description="largest artifact file")
    max_accuracy_drop: Optional[float] = Field(None, ge=0, le=1, description="largest accepted top-1 drop, as a fraction (0.01 = 1 point)")


class TargetProfile(Strict):
    name: Name = Field(description="the profile's name; it becomes part of file names (tensorrt-<name>/)")
    description: str = Field(max_length=500, description="one line for `compress targets`")
    aliases: list[Name] = Field(default_factory=list, description="other names `--target` accepts")
    device_class: Literal["cpu", "gpu", "jetson"] = Field(description="jetson: TensorRT engines are always built on the "
                                                                      "device (a bundle)")
    runtime: Literal["onnxruntime", "tensorrt"] = Field(description="the runtime that executes deployed artifacts")
    execution_providers: list[str] = Field(min_length=1, description="ONNX Runtime execution providers, in order of preference")
    precisions: list[Precision] = Field(min_length=1, description="precisions the hardware runs")
    preferred_precisions: list[Precision] = Field(min_length=1, description="precisions to export by default, best first")
    sparsity_2_4: bool = Field(False, description="hardware accelerates 2:4 semi-structured sparsity")
    peak_tops: dict[Precision, PositiveFloat] = Field(description="dense peak, tera-operations per second (1 MAC = 2 ops)")
    efficiency: float = Field(0.25, gt=0, le=1, description="share of peak compute a small CNN reaches; `compress profile --calibrate` measures it")
    memory_efficiency: Optional[float] = Field(None, gt=0, le=1000, description="share of peak bandwidth reached (default: efficiency); may exceed 1 where caches hold the activations")
    layer_overhead_us: float = Field(0.0, ge=0, le=1e6, description="fixed cost per layer (kernel launch, runtime dispatch)")
    memory_bandwidth_gbps: PositiveFloat = Field(description="peak memory bandwidth, GB/s (the cost model's memory term)")
    memory_gb: PositiveFloat = Field(description="memory of the device")
    cpu_cores: Optional[PositiveInt] = Field(None, le=4096, description="CPU cores ONNX Runtime may use: `compress profile` "
                                                                        "sweeps 1 to this many threads, and the deploy "
                                                                        "choice of a CPU target not measured here sets this many")
    channel_alignment: int = Field(1, ge=1, le=1024, description="channel counts should be a multiple of this")
    int8_min_out_channels: Natural = Field(0, description="INT8 ONNX: convolutions with fewer output channels stay "
                                                          "fp32 (narrow int8 CPU kernels can be slower than fp32)")
    int8_min_in_channels: Natural = Field(0, description="INT8 ONNX: ungrouped convolutions with fewer input channels "
                                                         "(an image stem) stay fp32")
    max_opset: int = Field(ge=MIN_OPSET, le=100, description="highest ONNX opset the runtime parses")
    tensorrt_version: Optional[Version] = Field(None, description="TensorRT version on the device, e.g. 10.3")
    jetpack: Optional[Version] = Field(None, description="JetPack version, e.g. 6.1")
    budgets: Budgets = Field(default_factory=Budgets, description="what a deployable artifact must meet")
    host: bool = Field(False, description="the profile describes this machine: latencies measured here are the target's")

    @model_validator(mode="after")
    def _consistent(self) -> "TargetProfile":
        extra = set(self.preferred_precisions) - set(self.precisions)
        if extra:
            raise ValueError(f"preferred_precisions {sorted(extra)} are not in precisions {self.precisions}")
        missing = set(self.precisions) - set(self.peak_tops)
        if missing:
            raise ValueError(f"peak_tops has no figure for {sorted(missing)}")
        if self.runtime == "onnxruntime":
            available = set().union(*(PROVIDER_PRECISIONS.get(p, {"fp32"}) for p in self.execution_providers))
            lacking = [p for p in self.precisions if p not in available]
            if lacking:
                raise ValueError(f"precisions {lacking} are not run by any of the execution providers {self.execution_providers}")
        return self
