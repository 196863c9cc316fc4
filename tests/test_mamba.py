"""The Mamba students and `type: mamba_pkd`: block shapes and gradients, the three scans agree, ONNX parity and the
TensorRT pre-flight, hand-counted MACs, the chain's teachers, the ensemble's subset search, and a chain through the CLI."""
import dataclasses
import json

import pytest
import torch

from compress.checkpoint import load_model_dir
from compress.cli import main
from compress.export.onnx import export_onnx, simplify
from compress.export.preflight import check_graph
from compress.export.validate import ort_session, run_session
from compress.methods.distill import chain
from compress.metrics import count_macs, layer_costs
from compress.models import build_model, make_spec
from compress.models.mamba import MambaBlock, scan_export, scan_parallel, scan_sequential
from compress.stages.mamba_pkd import MambaPkdStage
from compress.targets import resolve
from compress.training import evaluate
from conftest import tiny_pipeline

TINY = [{"d_model": 8, "n_layers": 1, "d_state": 2, "expand": 1, "patch": 7},
        {"d_model": 4, "n_layers": 1, "d_state": 2, "expand": 1, "patch": 7}]


def mamba(scan="parallel", **kwargs):
    torch.manual_seed(0)
    return build_model(make_spec("mamba_s", 1, 10, {"d_model": 16, "n_layers": 2, "d_state": 4, "patch": 4, "scan": scan, **kwargs}))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_block_keeps_shape_and_every_parameter_gets_a_gradient(bidirectional):
    block = MambaBlock(d_model=12, d_state=3, expand=2, bidirectional=bidirectional)
    x = torch.randn(3, 49, 12, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    logits = mamba(bidirectional=bidirectional)(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 10)


def test_the_three_scans_agree_on_outputs_and_gradients():
    torch.manual_seed(0)
    u, B, C = torch.randn(2, 49, 6), torch.randn(2, 49, 5), torch.randn(2, 49, 5)
    delta = torch.nn.functional.softplus(torch.randn(2, 49, 6))
    A = -torch.exp(torch.randn(6, 5)).requires_grad_()
    outputs, grads = [], []
    for scan in (scan_sequential, scan_parallel, scan_export):
        x = u.clone().requires_grad_()
        y = scan(x, delta, A, B, C)
        (gx, ga) = torch.autograd.grad(y.square().sum(), [x, A])
        outputs.append(y), grads.append((gx, ga))
    for y, (gx, ga) in zip(outputs[1:], grads[1:]):
        assert (y - outputs[0]).abs().max() <= 1e-5 * outputs[0].abs().max().clamp_min(1)
        assert torch.allclose(gx, grads[0][0], rtol=1e-4, atol=1e-4) and torch.allclose(ga, grads[0][1], rtol=1e-4, atol=1e-3)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        reference = mamba("sequential")(x)
        for scan in ("parallel", "export"):
            assert (mamba(scan)(x) - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("arch, kwargs", [
    ("mamba_s", {"d_model": 32, "n_layers": 2, "d_state": 8, "expand": 2, "patch": 4, "scan": "parallel"}),
    ("mamba_s", {"d_model": 16, "n_layers": 1, "d_state": 4, "expand": 2, "patch": 7, "bidirectional": True}),
    ("mamba_ensemble", {"members": TINY, "weights": [0.7, 0.3]}),
])
def test_onnx_matches_torch_and_passes_the_tensorrt_preflight(arch, kwargs, tmp_path):
    torch.manual_seed(0)
    model = build_model(make_spec(arch, 1, 10, kwargs)).eval()
    path = export_onnx(model, (1, 28, 28), tmp_path / "m.onnx", 17, "torchscript")
    simplify(path)
    for target in ("jetson-orin-nano", "x86-avx2"):
        check_graph(path, resolve(target))
    x = torch.randn(33, 1, 28, 28)
    with torch.no_grad():
        assert (run_session(ort_session(path), x, 16) - model(x)).abs().max() <= 1e-4


def test_macs_of_a_hand_counted_student():
    # 28x28, patch 14: T = 4 tokens; d_model = E = 4 (expand 1), N = 2 states, dt_rank = ceil(4 / 16) = 1
    model = build_model(make_spec("mamba_s", 1, 10, {"d_model": 4, "n_layers": 1, "d_state": 2, "expand": 1, "patch": 14}))
    expected = {
        "embed": 16 * 14 * 14,  # 4 channels x 2x2 outputs, each a 14x14 kernel
        "blocks.0.in_proj": 4 * 8 * 4,  # T x (2 E) outputs x d_model inputs
        "blocks.0.forward_ssm.conv1d": (4 + 3) * 4 * 4,  # depthwise, kernel 4, padded to T + 3 outputs
        "blocks.0.forward_ssm.x_proj": 4 * (1 + 2 * 2) * 4,
        "blocks.0.forward_ssm.dt_proj": 4 * 4 * 1,
        "blocks.0.forward_ssm.scan": 4 * 4 * 4 * 2 + 2 * 4 * 4,  # 4 T E N + 2 T E
        "blocks.0.out_proj": 4 * 4 * 4,
        "head": 10 * 4,
    }
    assert {c.name: c.macs for c in layer_costs(model, (1, 28, 28))} == expected
    assert count_macs(model, (1, 28, 28)) == 3736 == sum(expected.values())


def test_progressive_chain_teaches_each_student_with_the_one_before(ctx, monkeypatch):
    sources = []

    class Recording(chain.TeacherTargets):
        def __init__(self, teachers, *args, **kwargs):
            sources.append(teachers[0])
            super().__init__(teachers, *args, **kwargs)

    monkeypatch.setattr(chain, "TeacherTargets", Recording)
    teacher = build_model(make_spec("cnn_s", 1, 10, {"channels": [4, 8]}))
    students = [build_model(make_spec("mamba_s", 1, 10, {**size, "scan": "parallel"})) for size in TINY]
    cfg = MambaPkdStage.Config(students=TINY, epochs=1)
    ctx = dataclasses.replace(ctx, data=dataclasses.replace(ctx.data, train=ctx.data.train.head(64), val=ctx.data.val.head(64)))
    for progressive, expected in ((True, [teacher, students[0]]), (False, [teacher, teacher])):
        sources.clear()
        histories = chain.train_chain(teacher, students, cfg, ctx, 0.5, 4.0, progressive)
        assert [s is e for s, e in zip(sources, expected)] == [True, True] and len(histories) == 2
    assert all(p.requires_grad for m in (teacher, *students) for p in m.parameters())


def test_best_subset_is_the_most_accurate_within_the_budget():
    labels = torch.tensor([0, 1, 0, 1])
    votes = [[0, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 1], [1, 0, 1, 0]]  # 3/4 each (different misses), and 0/4
    probs = torch.eye(2)[torch.tensor(votes)] * 0.8 + 0.1
    majority = chain.best_subset(probs[:3], labels, [1.0, 1.0, 1.0], 3.0, fitted=False)
    assert majority.members == (0, 1, 2) and majority.accuracy == 1.0 and majority.cost == 3.0
    cheaper = chain.best_subset(probs[:3], labels, [1.0, 1.0, 1.0], 2.0, fitted=False)
    assert cheaper.members == (0,) and cheaper.accuracy == 0.75  # no pair beats one model; the cheaper wins the tie
    assert chain.best_subset(probs, labels, [1.0] * 4, 0.5, fitted=False) is None
    weights = chain.fit_weights(probs[[0, 3]], labels)
    assert weights[0] > 0.9 and weights.sum().item() == pytest.approx(1.0)


def test_a_student_larger_than_its_teacher_in_the_chain_is_a_warning(ctx, capsys):
    stage = MambaPkdStage(MambaPkdStage.Config(students=list(reversed(TINY))))
    spec = make_spec("cnn_s", 1, 10, {"channels": [4, 8]})
    stage.check(build_model(spec), spec, dataclasses.replace(ctx, quiet=False))
    assert "warning: stage 'train': students[1]" in capsys.readouterr().err
    MambaPkdStage(MambaPkdStage.Config(students=TINY)).check(build_model(spec), spec, dataclasses.replace(ctx, quiet=False))
    assert "warning" not in capsys.readouterr().err


def test_tiny_chain_through_the_cli(write_pipeline, tmp_path, tiny_data):
    stage = {"type": "mamba_pkd", "students": TINY, "epochs": 1, "ensemble": {"weights": "fitted"},
             "select": {"smallest_within": 100.0}, "latency_batch_sizes": [1, 32], "latency_runs": 2}
    export = {"formats": ["onnx"], "variants": "all", "latency_runs": 2, "latency_batch_sizes": [1]}
    path = write_pipeline(tiny_pipeline(stages=[{"type": "train", "epochs": 1}, stage], export=export, target="jetson"))
    assert main([str(path), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    record = report["stages"][1]
    assert [v["name"] for v in record["variants"]] == ["student-1", "student-2", "ensemble"]
    assert record["metrics"]["primary"] == "student-2"  # within 100 points: the fewest MACs
    for name, member in record["metrics"]["family"].items():
        assert set(member["latency_ms"]) == {"1", "32"} and member["max_abs_diff"] <= 1e-4, name
        assert 0 < member["macs_share"] < 1, name
    folder = tmp_path / "run" / "stages" / "02-mamba_pkd"
    for model_folder in (folder, folder / "variants" / "ensemble"):
        model, spec, metrics = load_model_dir(model_folder)
        assert evaluate(model, tiny_data.val)["accuracy"] == pytest.approx(metrics["val_accuracy"])
    assert spec.arch == "mamba_ensemble" and len(spec.kwargs["members"]) == 2
    assert all(a["status"] == "ok" and a["parity"]["max_abs_diff"] <= 1e-4 for a in report["artifacts"] if a["format"] == "onnx")
