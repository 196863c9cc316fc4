"""`onnx-fp16`: weights and arithmetic in fp16; inputs and outputs stay fp32 so callers need no change."""
from __future__ import annotations

from pathlib import Path

import onnx

from compress.errors import ExportError, described

from . import Exporter, ExportRequest, register_exporter
from .onnx import fp32_onnx, save_onnx


@register_exporter
class OnnxFp16Exporter(Exporter):
    format = "onnx-fp16"
    precision = "fp16"

    def export(self, request: ExportRequest) -> Path:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        path = request.out_dir / f"{request.name}.fp16.onnx"
        try:
            model = convert_float_to_float16(onnx.load(str(fp32_onnx(request))), keep_io_types=True)
        except Exception as e:  # the converter raises whatever the graph provokes
            raise ExportError(f"fp16 conversion failed: {described(e)}") from None
        return save_onnx(model, path)
