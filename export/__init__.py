"""Exporters (one module each) and the artifact records they produce. Export never trains."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from torch import nn

from compress.config import ExportConfig
from compress.registry import Registry

if TYPE_CHECKING:
    from compress.data import DataBundle
    from compress.models import ModelSpec
    from compress.targets import TargetProfile


@dataclass
class ExportRequest:
    """Everything an exporter needs: the model and its spec, data (calibration, validation), settings, target."""

    model: nn.Module
    spec: "ModelSpec"
    data: "DataBundle"
    out_dir: Path
    config: ExportConfig
    target: "TargetProfile"
    artifacts: list["Artifact"] = field(default_factory=list)  # produced so far in this run, e.g. the fp32 ONNX
    name: str = "model"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.data.input_shape


@dataclass
class Artifact:
    """One exported file and what validation found out about it."""

    format: str
    precision: str
    path: str
    size_bytes: int
    sha256: str
    opset: Optional[int] = None
    parity: dict[str, float] = field(default_factory=dict)  # max_abs_diff, top1_agreement
    accuracy: Optional[float] = None
    accuracy_drop: Optional[float] = None
    latency_ms: dict[str, float] = field(default_factory=dict)  # batch size -> median, measured on this machine
    latency_provider: Optional[str] = None
    estimated_latency_ms: Optional[float] = None  # batch 1 on the target: roofline cost model, or measured on a host target
    latency_source: str = "estimated"  # estimated (cost model) | measured (the target is this machine)
    estimated_memory_mb: Optional[float] = None  # the file plus the largest layer's activations at batch 1
    variant: Optional[str] = None  # the model of the stage family it was exported from; None: the primary model
    target: str = ""  # the target profile it was exported and checked for
    notes: list[str] = field(default_factory=list)  # e.g. accuracy control fell back, pre-flight warnings
    status: str = "ok"  # ok | rejected | failed | bundle
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Exporter:
    """Turns a model into one deployable file: a `format` name, its `precision`, and `export(request)`.

    A packaging exporter (`packages = True`, e.g. TensorRT) builds from the ONNX artifacts already made and returns a
    folder that the ONNX Runtime validation does not apply to.
    """

    format: ClassVar[str]
    precision: ClassVar[str]
    packages: ClassVar[bool] = False
    runtime: ClassVar[Optional[str]] = None  # packaging exporters: the target runtime they package for

    def __init__(self):
        self.notes: list[str] = []  # what the last export decided that the report should say (fallbacks, settings)

    def export(self, request: ExportRequest) -> Path:
        raise NotImplementedError


EXPORTERS: Registry[type[Exporter]] = Registry("export format")


def register_exporter(cls: type[Exporter]) -> type[Exporter]:
    """Class decorator: register an exporter under its `format`."""
    EXPORTERS.add(cls.format, cls)
    return cls


from . import fp16, onnx, quantize, tensorrt  # noqa: E402,F401  (register the exporters)
