"""Pre-flight check of an exported graph against the target: opset and operators its runtime can run."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import onnx
import yaml

from compress.errors import ExportError
from compress.targets import TargetProfile


@lru_cache(maxsize=None)
def tensorrt_ops(version: str) -> frozenset[str]:
    """ONNX operators the TensorRT parser of this major version imports."""
    table = yaml.safe_load(resources.files("compress.targets").joinpath("runtimes", "tensorrt-ops.yaml").read_text())
    major = version.split(".")[0]
    added = [ops for v, ops in table["added"].items() if int(v) <= int(major)]
    return frozenset(table["base"]).union(*added)


def check_graph(path: Path, target: TargetProfile) -> None:
    """Raise ExportError naming the op, the node and the target when the graph cannot run there."""
    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > target.max_opset:
        raise ExportError(f"{path.name}: opset {opset} is above target {target.name}'s maximum {target.max_opset}; set export.opset")
    if target.runtime == "tensorrt":
        supported = tensorrt_ops(target.tensorrt_version or "10")
        for node in model.graph.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in supported:
                raise ExportError(
                    f"{path.name}: node '{node.name}' uses operator {node.domain + '::' if node.domain else ''}{node.op_type}, "
                    f"which TensorRT {target.tensorrt_version} on target {target.name} cannot import; replace the layer "
                    f"that produces it or choose another target")
