"""Exporters (one module each) and the artifact records they produce. Export never trains."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from torch import nn

from compress.config import ExportConfig
from compress.registry import Registry


@dataclass
class ExportRequest:
    """Everything an exporter needs: the model, its input shape, where to write, the export settings and the target."""

    model: nn.Module
    input_shape: tuple[int, ...]
    out_dir: Path
    config: ExportConfig
    target: "TargetProfile"  # noqa: F821
    name: str = "model"


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
    estimated_latency_ms: Optional[float] = None  # batch 1 on the target, roofline cost model
    status: str = "ok"  # ok | rejected
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Exporter:
    """Turns a model into one deployable file: a `format` name, its `precision`, and `export(request)`."""

    format: ClassVar[str]
    precision: ClassVar[str]

    def export(self, request: ExportRequest) -> Path:
        raise NotImplementedError


EXPORTERS: Registry[type[Exporter]] = Registry("export format")


def register_exporter(cls: type[Exporter]) -> type[Exporter]:
    """Class decorator: register an exporter under its `format`."""
    EXPORTERS.add(cls.format, cls)
    return cls


from . import onnx  # noqa: E402,F401  (registers `onnx`)
