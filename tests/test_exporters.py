"""Every exporter on a tiny model, INT8 details, the TensorRT bundle, the pre-flight check."""
import json
import shlex

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from compress.config import ExportConfig
from compress.errors import ExportError
from compress.export import EXPORTERS
from compress.export.preflight import check_graph
from compress.export.quantize import narrow_convolutions
from compress.export.runner import default_formats, export_and_validate
from compress.models import build_model, make_spec
from compress.models.spec import Sparsity
from compress.targets import resolve
from compress.training import Trainer, TrainConfig

FAST = ExportConfig(latency_runs=2, latency_batch_sizes=[1, 4], validation_limit=200)


@pytest.fixture(scope="module")
def trained(tiny_data):
    """cnn_s trained briefly, so quantization has real activation ranges to calibrate."""
    from compress.context import RunContext
    from compress.config import DataConfig

    torch.manual_seed(0)
    spec = make_spec("cnn_s", 1, 10, {"channels": [8, 16]})
    model = build_model(spec)
    ctx = RunContext(data=tiny_data, data_config=DataConfig(batch_size=32))
    Trainer(model, TrainConfig(epochs=2, optimizer="adam", lr=0.01), ctx).fit()
    return model.eval(), spec


@pytest.mark.parametrize("target, formats", [
    ("x86-avx512-vnni", ["onnx", "onnx-int8"]),
    ("jetson-orin-nano", ["onnx", "onnx-fp16", "onnx-int8", "tensorrt"]),
    ("jetson-nano", ["onnx", "onnx-fp16", "tensorrt"]),
])
def test_default_formats_follow_the_target(target, formats):
    assert default_formats(resolve(target)) == formats


@pytest.mark.parametrize("fmt", [f for f in EXPORTERS.names() if not EXPORTERS.get(f).packages])
def test_every_file_exporter_is_validated(fmt, trained, tiny_data, tmp_path):
    model, spec = trained
    config = FAST.model_copy(update={"formats": ["onnx", fmt] if fmt != "onnx" else ["onnx"]})
    artifacts, _ = export_and_validate(model, spec, tiny_data, config, resolve("jetson-orin-nano"), tmp_path)
    artifact = artifacts[-1]
    assert artifact.format == fmt and artifact.status in ("ok", "rejected"), artifact.reason
    assert artifact.parity["top1_agreement"] > 0.9 and artifact.size_bytes > 0 and set(artifact.latency_ms) == {"1", "4"}
    assert artifact.estimated_latency_ms > 0 and artifact.latency_source == "estimated"
    bound = {"fp32": 1e-4, "fp16": 0.05, "int8": 2.0}[artifact.precision]
    assert artifact.parity["max_abs_diff"] <= bound


def test_the_torch_export_based_exporter_matches_torch(trained, tiny_data, tmp_path):
    model, spec = trained
    config = FAST.model_copy(update={"formats": ["onnx"], "exporter": "dynamo"})
    (artifact,), deploy = export_and_validate(model, spec, tiny_data, config, resolve("x86-cpu"), tmp_path)
    assert artifact.status == "ok" and artifact.parity["max_abs_diff"] <= 1e-4 and deploy is not None


def zero_points(path):
    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    return [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]


def test_int8_for_tensorrt_is_symmetric_signed(trained, tiny_data, tmp_path):
    model, spec = trained
    artifacts, _ = export_and_validate(model, spec, tiny_data, FAST.model_copy(update={"formats": ["onnx", "onnx-int8"]}),
                                       resolve("jetson-orin-nano"), tmp_path)
    int8 = artifacts[1]
    points = zero_points(int8.path)
    assert points and all(z.data_type == onnx.TensorProto.INT8 and not numpy_helper.to_array(z).any() for z in points)
    assert any("symmetric" in note for note in int8.notes) and any("accuracy-controlled" in n for n in int8.notes)
    assert int8.accuracy_drop <= 0.05


def test_int8_for_cpu_uses_accuracy_control_and_stays_close(trained, tiny_data, tmp_path):
    model, spec = trained
    artifacts, deploy = export_and_validate(model, spec, tiny_data, FAST, resolve("x86-avx512-vnni"), tmp_path)
    assert [a.format for a in artifacts] == ["onnx", "onnx-int8"]
    assert artifacts[1].accuracy_drop <= 0.02 and deploy is not None


def conv_weights(path) -> dict[str, tuple[int, bool]]:
    """Conv node name -> (output channels, whether its weight arrives through a DequantizeLinear, i.e. is int8)."""
    model = onnx.load(path)
    shapes = {i.name: i.dims[0] for i in model.graph.initializer if i.dims}
    producers = {out: n for n in model.graph.node for out in n.output}
    convs = {}
    for node in (n for n in model.graph.node if n.op_type == "Conv"):
        source = producers.get(node.input[1])
        weight = source.input[0] if source is not None and source.op_type == "DequantizeLinear" else node.input[1]
        convs[node.name] = (shapes[weight], source is not None and source.op_type == "DequantizeLinear")
    return convs


@pytest.mark.parametrize("target, fp32_convs", [("x86-avx2", 1), ("jetson-orin-nano", 0)])
def test_int8_keeps_convolutions_narrower_than_the_target_minimum_in_fp32(trained, tiny_data, tmp_path, target, fp32_convs):
    model, spec = trained
    config = FAST.model_copy(update={"formats": ["onnx", "onnx-int8"], "accuracy_control": False})
    artifacts, _ = export_and_validate(model, spec, tiny_data, config, resolve(target), tmp_path)
    convs = conv_weights(artifacts[1].path)
    assert sorted(convs.values()) == sorted([(8, fp32_convs == 0), (16, True)])  # cnn_s [8, 16]
    kept = [n for n in artifacts[1].notes if "input channels in fp32" in n]
    assert len(kept) == fp32_convs and all("kept 1 convolution(s) with fewer than 16 output or 4 input channels" in n for n in kept)


def test_narrow_convolutions_by_output_and_ungrouped_input_channels():
    def conv(name: str, shape: tuple[int, ...], group: int = 1) -> tuple:
        weight = helper.make_tensor(f"{name}.w", onnx.TensorProto.FLOAT, shape, [0.0] * int(np.prod(shape)))
        return helper.make_node("Conv", ["x", weight.name], [name], name=name, group=group), weight

    nodes, weights = zip(conv("stem", (16, 1, 3, 3)), conv("thin", (8, 16, 3, 3)), conv("wide", (32, 16, 3, 3)),
                         conv("depthwise", (16, 1, 3, 3), group=16))
    graph = helper.make_graph(list(nodes), "g", [], [], initializer=list(weights))
    model = helper.make_model(graph)
    assert narrow_convolutions(model, 16, 4) == ["stem", "thin"]
    assert narrow_convolutions(model, 16, 0) == ["thin"] and narrow_convolutions(model, 0, 0) == []


def test_too_small_calibration_set_is_recorded(trained, tiny_data, tmp_path):
    from dataclasses import replace

    model, spec = trained
    data = replace(tiny_data, calibration=tiny_data.calibration.head(8))
    artifacts, deploy = export_and_validate(model, spec, data, FAST.model_copy(update={"formats": ["onnx", "onnx-int8"]}),
                                            resolve("x86-avx2"), tmp_path)
    assert artifacts[1].status == "failed" and "at least 32 examples" in artifacts[1].reason
    assert deploy["format"] == "onnx"


def build_script_commands(path):
    return [shlex.split(line) for line in path.read_text().splitlines() if line.startswith('"$TRTEXEC" --onnx')]


def test_orin_bundle_has_the_right_trtexec_flags(trained, tiny_data, tmp_path):
    model, spec = trained
    sparse = model_with_2_4(model)
    artifacts, deploy = export_and_validate(sparse, spec.marked(Sparsity(pattern="2:4", layers=["2.0"])), tiny_data,
                                            FAST, resolve("jetson"), tmp_path)
    bundle = tmp_path / "tensorrt-jetson-orin-nano"
    assert artifacts[-1].status == "bundle" and deploy["bundle"] == str(bundle)
    commands = {cmd[2]: cmd for cmd in build_script_commands(bundle / "build_engine.sh")}
    int8, fp16 = commands["--saveEngine=model.int8.engine"], commands["--saveEngine=model.fp16.engine"]
    assert int8[1] == "--onnx=model.int8.onnx" and {"--int8", "--fp16", "--sparsity=enable"} <= set(int8)
    assert fp16[1] == "--onnx=model.fp32.onnx" and "--fp16" in fp16 and "--int8" not in fp16
    for cmd in (int8, fp16):
        assert {"--minShapes=input:1x1x28x28", "--optShapes=input:4x1x28x28", "--maxShapes=input:8x1x28x28",
                "--timingCacheFile=timing.cache"} <= set(cmd)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["tensorrt_version"] == "10.3" and manifest["jetpack"] == "6.1" and manifest["sparsity_2_4"]
    assert manifest["input"]["shape"] == [-1, 1, 28, 28] and not manifest["engines_built"]
    assert manifest["profile"] == "compress profile . --target jetson-orin-nano"
    for line in (bundle / "checksums.sha256").read_text().splitlines():
        digest, name = line.split()
        from compress.atomic import sha256_file
        assert sha256_file(bundle / name) == digest


def model_with_2_4(model):
    """A copy whose second conv (module "2.0" of cnn_s) holds the 2:4 pattern along its input channels."""
    import copy

    sparse = copy.deepcopy(model)
    weight = sparse[2][0].weight.data
    rows = weight.movedim(1, -1).reshape(-1, 4)
    rows.scatter_(1, rows.abs().topk(2, dim=1, largest=False).indices, 0.0)
    weight.copy_(rows.reshape(weight.movedim(1, -1).shape).movedim(-1, 1))
    return sparse


@pytest.mark.parametrize("target, sparse", [("jetson-nano", True), ("jetson", False)])
def test_no_sparsity_flag_without_the_pattern_or_support(trained, tiny_data, tmp_path, target, sparse):
    model, spec = trained  # `trained` is dense: its 2:4 mark is stale
    model = model_with_2_4(model) if sparse else model
    export_and_validate(model, spec.marked(Sparsity(pattern="2:4", layers=["2.0"])), tiny_data, FAST,
                        resolve(target), tmp_path)
    commands = build_script_commands(next(tmp_path.glob("tensorrt-*")) / "build_engine.sh")
    assert commands and all("--sparsity=enable" not in c for c in commands)


def graph_with(op: str, opset: int, tmp_path, domain: str = ""):
    node = helper.make_node(op, ["x"], ["y"], name=f"my_{op.lower()}", domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    path = tmp_path / f"{op}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


@pytest.mark.parametrize("op, opset, target, words", [
    ("Relu", 17, "jetson-nano", ["opset 17 is above target jetson-nano's maximum 13"]),
    ("LayerNormalization", 13, "jetson-nano", ["node 'my_layernormalization'", "LayerNormalization", "TensorRT 8.2", "jetson-nano"]),
    ("Unique", 17, "jetson", ["node 'my_unique'", "operator Unique", "jetson-orin-nano"]),
])
def test_preflight_names_op_node_and_target(op, opset, target, words, tmp_path):
    message = str(pytest.raises(ExportError, check_graph, graph_with(op, opset, tmp_path), resolve(target)).value)
    assert all(w in message for w in words)


def test_preflight_accepts_supported_graph(tmp_path):
    check_graph(graph_with("LayerNormalization", 17, tmp_path), resolve("jetson"))
    check_graph(graph_with("Unique", 17, tmp_path), resolve("x86-avx2"))  # ONNX Runtime runs it


@pytest.mark.parametrize("target, formats", [("x86-avx512-vnni", ["onnx", "onnx-int8"]),
                                             ("jetson", ["onnx", "onnx-fp16", "onnx-int8", "tensorrt"])])
def test_cli_exports_what_the_target_asks_for_and_profiles_it(write_pipeline, tmp_path, target, formats):
    from compress.cli import main
    from conftest import tiny_pipeline

    export = {"latency_runs": 2, "latency_batch_sizes": [1], "validation_limit": 200}
    path = write_pipeline(tiny_pipeline(export=export, stages=[{"type": "train", "epochs": 2, "optimizer": "adam", "lr": 0.01}]))
    run_dir = tmp_path / "run"
    assert main([str(path), "--target", target, "--run-dir", str(run_dir), "--quiet"]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert [a["format"] for a in report["artifacts"]] == formats
    assert all(a["parity"]["top1_agreement"] > 0.9 for a in report["artifacts"] if a["status"] != "bundle")
    assert main(["profile", str(run_dir / "artifacts"), "--target", "host", "--runs", "3", "--quiet"]) == 0
    profiled = {r["file"] for r in json.loads((run_dir / "report.json").read_text())["profile"]["results"]}
    assert {"model.fp32.onnx", "model.int8.onnx"} <= profiled
