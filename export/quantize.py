"""`onnx-int8`: post-training quantization with NNCF into Q/DQ ONNX, calibrated on the pipeline's calibration subset.

Activations are symmetric (zero point 0, signed int8) for TensorRT targets, as TensorRT's explicit quantization
requires; other runtimes get NNCF's mixed preset (asymmetric activations). When the target sets a maximum accuracy
drop, NNCF's accuracy-controlled quantization keeps the most sensitive layers in fp32 to stay within it. Convolutions
with fewer output channels than the target's `int8_min_out_channels`, or fewer input channels than its
`int8_min_in_channels` (an image stem), stay fp32: on CPUs their int8 kernels are slower than fp32 ones.
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from compress.errors import ExportError, described

from . import Exporter, ExportRequest, register_exporter
from .onnx import fp32_onnx, save_onnx

MIN_CALIBRATION = 32
VALIDATION_BATCH = 100


def signed_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn uint8 Q/DQ pairs with zero point 0 into int8 ones over the same range (scale x 255/127), in place."""
    inits = {i.name: i for i in model.graph.initializer}
    scaled = set()
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zero_point = inits.get(node.input[2])
        if zero_point is None or zero_point.data_type != onnx.TensorProto.UINT8:
            continue
        if numpy_helper.to_array(zero_point).any():
            raise ExportError(f"node {node.name}: asymmetric uint8 quantization cannot be made symmetric")
        scale_name = node.input[1]
        if scale_name not in scaled:
            scale = inits[scale_name]
            scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(255 / 127), scale_name))
            scaled.add(scale_name)
        zero_point.CopyFrom(numpy_helper.from_array(np.zeros(numpy_helper.to_array(zero_point).shape, np.int8), zero_point.name))
    del model.graph.value_info[:]  # recorded uint8 types are stale; ONNX Runtime infers them again
    return model


def narrow_convolutions(model: onnx.ModelProto, min_out_channels: int, min_in_channels: int) -> list[str]:
    """Names of the Conv nodes whose weight has fewer than `min_out_channels` output channels, or, not grouped, fewer
    than `min_in_channels` input channels."""
    shapes = {i.name: i.dims for i in model.graph.initializer}

    def narrow(node: onnx.NodeProto) -> bool:
        out_channels, in_per_group = shapes[node.input[1]][:2]
        grouped = any(a.name == "group" and a.i > 1 for a in node.attribute)
        return out_channels < min_out_channels or (not grouped and in_per_group < min_in_channels)

    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] in shapes and narrow(n)]


def accuracy_fn(model: onnx.ModelProto, batches) -> tuple[float, list[float]]:
    """NNCF validation function: top-1 accuracy of an ONNX model over (x, y) batches, and per-batch accuracy."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    per_batch = [float((session.run(None, {name: x})[0].argmax(1) == y).mean()) for x, y in batches]
    return float(np.mean(per_batch)), per_batch


@register_exporter
class OnnxInt8Exporter(Exporter):
    format = "onnx-int8"
    precision = "int8"

    def export(self, request: ExportRequest) -> Path:
        import nncf

        calibration = request.data.calibration
        if len(calibration) < MIN_CALIBRATION:
            raise ExportError(f"INT8 calibration needs at least {MIN_CALIBRATION} examples, the calibration set has "
                              f"{len(calibration)}: raise data.calibration_size (or data.limit)")
        nncf.set_log_level(logging.ERROR)
        model = onnx.load(str(fp32_onnx(request)))
        target = request.target
        symmetric = target.runtime == "tensorrt"
        preset = nncf.QuantizationPreset.PERFORMANCE if symmetric else nncf.QuantizationPreset.MIXED
        calib = nncf.Dataset([x[None].numpy() for x in calibration.x], lambda x: {"input": x})
        settings = dict(preset=preset, subset_size=len(calibration))
        narrow = narrow_convolutions(model, target.int8_min_out_channels, target.int8_min_in_channels)
        if narrow:
            settings["ignored_scope"] = nncf.IgnoredScope(names=narrow)
            self.notes.append(f"kept {len(narrow)} convolution(s) with fewer than {target.int8_min_out_channels} output or "
                              f"{target.int8_min_in_channels} input channels in fp32 (the target's int8_min_out_channels, "
                              f"int8_min_in_channels): {', '.join(narrow)}")
        max_drop = target.budgets.max_accuracy_drop
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # NNCF draws progress bars on stdout
                if max_drop is not None and request.config.accuracy_control:
                    val = request.data.val.head(request.config.validation_limit)
                    batches = [(x.numpy(), y.numpy()) for x, y in zip(val.x.split(VALIDATION_BATCH), val.y.split(VALIDATION_BATCH))]
                    quantized = nncf.quantize_with_accuracy_control(
                        model, calib, nncf.Dataset(batches, lambda b: {"input": b[0]}), accuracy_fn, max_drop=max_drop, **settings)
                    self.notes.append(f"accuracy-controlled quantization (max drop {max_drop:.2%} on {len(val)} validation examples)")
                else:
                    quantized = nncf.quantize(model, calib, **settings)
        except Exception as e:  # NNCF and ONNX Runtime raise many unrelated types
            raise ExportError(f"NNCF INT8 quantization failed: {described(e)}") from None
        if symmetric:
            signed_activations(quantized)
            self.notes.append("symmetric signed int8 activations (zero point 0) for TensorRT")
        return save_onnx(quantized, request.out_dir / f"{request.name}.int8.onnx")
