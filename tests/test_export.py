import onnx
import pytest
import torch

from compress.config import ExportConfig
from compress.errors import ExportError
from compress.export import Artifact
from compress.export.runner import apply_budgets, choose_deployable, export_and_validate
from compress.models import build_model, make_spec
from compress.targets import resolve


@pytest.mark.parametrize("arch", ["cnn_s", "resnet_s", "mobilenet_s"])
def test_onnx_parity_dynamic_batch_and_opset(arch, tiny_data, tmp_path):
    torch.manual_seed(0)
    spec = make_spec(arch, 1, 10)
    config = ExportConfig(formats=["onnx"], latency_runs=3, latency_batch_sizes=[1, 8])
    artifacts, deploy = export_and_validate(build_model(spec), spec, tiny_data, config, resolve("jetson"), tmp_path)
    (a,) = artifacts
    assert a.parity["max_abs_diff"] <= 1e-4 and a.parity["top1_agreement"] == 1.0
    assert set(a.latency_ms) == {"1", "8"} and a.status == "ok" and deploy["path"] == a.path
    graph = onnx.load(a.path)
    assert graph.opset_import[0].version == 17
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_opset_above_target_maximum_is_refused(tiny_data, tmp_path):
    spec = make_spec("cnn_s", 1, 10, {"channels": [4]})
    with pytest.raises(ExportError, match="above target jetson-orin-nano's maximum opset 20"):
        export_and_validate(build_model(spec), spec, tiny_data, ExportConfig(opset=21), resolve("jetson"), tmp_path)


def artifact(precision="fp32", drop=0.0, estimate=1.0, size=1000):
    return Artifact(format="onnx", precision=precision, path=f"m.{precision}.onnx", size_bytes=size, sha256="",
                    accuracy=0.9 - drop, accuracy_drop=drop, estimated_latency_ms=estimate)


@pytest.mark.parametrize("candidate, reason", [
    (artifact(drop=0.02), "accuracy drop 2.00% exceeds the budget 1.00%"),
    (artifact(precision="fp16"), "x86-avx2 does not run fp16"),
])
def test_budgets_reject_with_reason(candidate, reason):
    apply_budgets(candidate, resolve("x86-cpu"))
    assert candidate.status == "rejected" and reason in candidate.reason
    assert choose_deployable([candidate], resolve("x86-cpu")) is None


def test_deployable_is_fastest_accepted_artifact():
    target = resolve("x86-cpu")
    fast_but_bad, slow, fast = artifact("int8", drop=0.05, estimate=0.1), artifact("fp32", estimate=1.0), artifact("int8", estimate=0.3)
    for a in (fast_but_bad, slow, fast):
        apply_budgets(a, target)
    deploy = choose_deployable([fast_but_bad, slow, fast], target)
    assert deploy["path"] == fast.path and "lowest estimated batch-1 latency" in deploy["reason"]
