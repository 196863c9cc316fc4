"""`onnx`: fp32 ONNX with a dynamic batch axis, at the target's opset, simplified with onnxslim."""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch

from compress.atomic import staged
from compress.errors import ExportError, described

from . import Exporter, ExportRequest, register_exporter

DEFAULT_OPSET = 17  # parsed by TensorRT 8.6+ and every current ONNX Runtime
DYNAMO_OPSET = 18  # the lowest opset torch.onnx's torch.export-based exporter writes without a lossy conversion


def opset_for(request: ExportRequest) -> int:
    """The configured opset, or the target's maximum capped at DEFAULT_OPSET (at least DYNAMO_OPSET for the dynamo
    exporter); never above the target's maximum."""
    floor = DYNAMO_OPSET if request.config.exporter == "dynamo" else 0
    opset = request.config.opset or max(floor, min(request.target.max_opset, DEFAULT_OPSET))
    if opset > request.target.max_opset:
        raise ExportError(f"export.opset {opset} is above target {request.target.name}'s maximum opset {request.target.max_opset}")
    return opset


def export_onnx(model: torch.nn.Module, input_shape: tuple[int, ...], path: Path, opset: int, exporter: str) -> Path:
    """Export `model` (eval mode, CPU) with input 'input' and output 'logits', batch axis dynamic."""
    model = model.cpu().eval()
    example = torch.zeros(2, *input_shape)
    with staged(path) as tmp:
        export_to(model, example, tmp, opset, exporter)
    return path


def export_to(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, exporter: str) -> None:
    try:
        with warnings.catch_warnings(), quiet_loggers("torch.onnx", "onnxscript"):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset, input_names=["input"],
                                  output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                  external_data=False, verbose=False)
            else:
                torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                                  output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    except OSError:
        raise
    except Exception as e:  # the exporters raise many unrelated types
        raise ExportError(f"ONNX export ({exporter}, opset {opset}) failed: {described(e)}") from None


@contextmanager
def quiet_loggers(*names: str):
    """Only errors from these libraries' loggers while exporting (they narrate fallbacks as warnings with tracebacks)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def simplify(path: Path) -> None:
    """Fold constants and remove redundant nodes in place (onnxslim)."""
    import onnxslim

    save_onnx(onnxslim.slim(onnx.load(str(path))), path)


def save_onnx(model: onnx.ModelProto, path: Path) -> Path:
    """Write an ONNX model atomically (temporary file, then rename)."""
    with staged(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def stamp_spec(path: Path, spec) -> None:
    """Record the model's spec (architecture, arguments, transforms: e.g. a sub-network's widths and dropped blocks)
    in the ONNX file's metadata as `compress.spec`, so a file says which model it is."""
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != "compress.spec"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key="compress.spec", value=spec.model_dump_json())
    save_onnx(model, path)


def fp32_onnx(request: ExportRequest) -> Path:
    """The fp32 ONNX file of this export: the `onnx` artifact already made, or a new one."""
    for artifact in request.artifacts:
        if artifact.format == OnnxExporter.format:
            return Path(artifact.path)
    return OnnxExporter().export(request)


@register_exporter
class OnnxExporter(Exporter):
    format = "onnx"
    precision = "fp32"

    def export(self, request: ExportRequest) -> Path:
        path = request.out_dir / f"{request.name}.fp32.onnx"
        export_onnx(request.model, request.input_shape, path, opset_for(request), request.config.exporter)
        if request.config.simplify:
            simplify(path)
        return path
