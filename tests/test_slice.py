"""Sub-network slicing: importance sorting keeps the function, the sliced forward equals the extracted model (residual
blocks, depth, a grouped convolution fed by a concatenation, depthwise convolutions), specs rebuild the models, and one
CLI run with three targets trains the supernet once and deploys three different sub-networks, each within its
target's budgets, exported and validated, its configuration in the ONNX metadata."""
import json
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from torch import nn

from compress.checkpoint import VARIANTS, load_model_dir
from compress.cli import main
from compress.config import DataConfig
from compress.data import Batch, load_data
from compress.methods.pruning.masks import layers_in_order
from compress.methods.slicing.groups import find_groups
from compress.methods.slicing.supernet import SubNet, Supernet, residual_stages, sort_by_importance
from compress.methods.slicing.training import SandwichStep
from compress.metrics import count_macs
from compress.models import build_model, make_spec
from compress.models.spec import ModelSpec
from compress.training import evaluate
from conftest import TINY_DATA, tiny_pipeline

SHAPE = (1, 28, 28)
RESNET = make_spec("resnet_s", 1, 10, {"widths": [8, 16], "depths": [2, 2]})


class ConcatGrouped(nn.Module):
    """Two branches concatenated into a grouped convolution (4 groups), then a depthwise one and a classifier."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 8, 3), nn.Conv2d(1, 8, 3)
        self.grouped, self.bn = nn.Conv2d(16, 32, 3, groups=4), nn.BatchNorm2d(32)
        self.depthwise = nn.Conv2d(32, 32, 3, groups=32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        y = torch.relu(torch.cat([self.a(x), self.b(x)], 1))
        y = self.depthwise(torch.relu(self.bn(self.grouped(y))))
        return self.fc(y.mean((2, 3)))


def scrambled(model: nn.Module) -> nn.Module:
    """`model` in eval mode with BatchNorm statistics and affine terms far from their defaults."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def supernet_of(model: nn.Module, depth: bool = True) -> Supernet:
    nesting = find_groups(model, torch.zeros(1, *SHAPE), keep=[list(layers_in_order(model, SHAPE))[-1]])
    return Supernet(model, nesting, residual_stages(model, SHAPE) if depth else [])


MODELS = {"resnet": lambda: build_model(RESNET), "concat-grouped": ConcatGrouped,
          "mobilenet": lambda: build_model(make_spec("mobilenet_s", 1, 10, {}))}


@pytest.mark.parametrize("name", MODELS)
def test_importance_sorting_keeps_the_function(name):
    model = scrambled(MODELS[name]())
    x = torch.randn(8, *SHAPE)
    before = model(x)
    supernet = supernet_of(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    sort_by_importance(supernet)
    assert torch.allclose(model(x), before, atol=1e-5)
    assert any(not torch.equal(weights[k], v) for k, v in model.state_dict().items())  # something did move


@pytest.mark.parametrize("name", MODELS)
def test_the_extracted_sub_network_computes_the_sliced_forward(name):
    model = scrambled(MODELS[name]())
    supernet = supernet_of(model)
    sort_by_importance(supernet)
    x = torch.randn(4, *SHAPE)
    full = model(x)
    for subnet in [SubNet(0.25, 1 if supernet.stages else None), SubNet(0.5), SubNet(0.75, 1 if supernet.stages else None)]:
        with supernet.active(subnet):
            sliced = model(x)
        dense, transforms = supernet.extract(subnet)
        assert torch.allclose(dense.eval()(x), sliced, atol=1e-5)
        assert count_macs(dense, SHAPE) < count_macs(model, SHAPE) or subnet.width == 0.75  # 0.75 of 2 groups: both
        rebuilt = MODELS[name]()
        for transform in transforms:
            rebuilt = transform.apply(rebuilt)
        rebuilt.load_state_dict(dense.state_dict())
        assert torch.allclose(rebuilt.eval()(x), sliced, atol=1e-5)
    assert torch.allclose(model(x), full)  # the supernet is itself again outside `active`


def test_a_supernet_in_nhwc_slices_nhwc_kernels_and_computes_the_same(monkeypatch):
    model = scrambled(build_model(RESNET))
    supernet = supernet_of(model)
    x = torch.randn(4, *SHAPE)
    subnet = SubNet(0.5, 1)
    with supernet.active(subnet):
        expected = model(x)
    kernels = []

    def spy(x, weight, *args):
        if weight.shape[1] > 1 and weight.shape[2] > 1:
            kernels.append(weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous())
        return conv2d(x, weight, *args)

    conv2d = torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    model.to(memory_format=torch.channels_last)
    with supernet.active(subnet):
        got = model(x.contiguous(memory_format=torch.channels_last))
    assert kernels and all(kernels)  # index_select hands back NCHW slices
    assert torch.allclose(got, expected, atol=1e-5)


def test_a_resnet_sub_network_rebuilds_from_its_spec():
    model = scrambled(build_model(RESNET))
    supernet = supernet_of(model)
    dense, transforms = supernet.extract(SubNet(0.5, 1))
    spec = ModelSpec.from_json(json.loads(RESNET.then(*transforms).model_dump_json()))
    rebuilt = build_model(spec)
    rebuilt.load_state_dict(dense.state_dict())
    x = torch.randn(2, *SHAPE)
    assert torch.allclose(rebuilt.eval()(x), dense.eval()(x))
    assert supernet.stages == [["blocks.0", "blocks.1"], ["blocks.2", "blocks.3"]]
    assert spec.transforms[-1].modules == ["blocks.1", "blocks.3"]


def test_a_grouped_convolution_keeps_whole_groups():
    model = ConcatGrouped().eval()
    supernet = supernet_of(model)
    dense, _ = supernet.extract(SubNet(0.5))
    assert (dense.grouped.groups, dense.grouped.in_channels, dense.grouped.out_channels) == (2, 8, 16)
    assert (dense.a.out_channels, dense.b.out_channels) == (4, 4)  # one group's inputs from each branch
    assert dense.depthwise.groups == dense.depthwise.out_channels == 16
    assert count_macs(dense, SHAPE) / count_macs(model, SHAPE) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("smallest, expected", [("overall", ["w0.25-d1"] * 4),
                                                 ("per_depth", ["w0.25-d1", "w0.25-d2"] * 2)])
def test_the_sandwich_takes_its_smallest_overall_or_per_depth_and_samples_the_rest(smallest, expected):
    model = build_model(RESNET)
    supernet = supernet_of(model)
    grid = [SubNet(w, d) for d in (1, 2) for w in (0.25, 0.5, 1.0)]
    step = SandwichStep(supernet, grid, samples=1, inplace=True, seed=0, loss_fn=lambda logits, b: logits.sum(),
                        smallest=smallest)
    active, enter = [], supernet.active
    supernet.active = lambda subnet: (active.append(subnet.name), enter(subnet))[1]
    batch = Batch(torch.randn(2, *SHAPE), torch.tensor([0, 1]), torch.arange(2))
    for _ in expected:
        step(model, batch)
    assert [active[i] for i in range(0, 8, 2)] == expected
    sampled = set(active[1::2])
    assert sampled and not sampled & (set(expected) | {"w1-d2"})


def test_layers_that_cannot_be_nested_are_named():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    nesting = find_groups(model, torch.zeros(1, *SHAPE), keep=["7"])
    assert nesting.fixed["1"].startswith("GroupNorm") and nesting.fixed["7"] == "kept at full width"
    assert [g.name for g in nesting.groups] == ["3"]


# ---- one CLI run, three targets -----------------------------------------------------------------------------------

WIDTHS = [0.25, 0.5, 1.0]
DATA = {**TINY_DATA, "limit": 1024, "batch_size": 64}  # enough examples that wider sub-networks are clearly better
MODEL = {"arch": "resnet_s", "kwargs": {"widths": [16, 32], "depths": [1, 1]}}


def fp32_bytes(model: nn.Module) -> int:
    return 4 * sum(p.numel() for p in model.parameters())


def target_file(folder: Path, name: str, size_mb: float) -> str:
    """A copy of the x86-avx2 profile that prefers fp32, aligns channels to 2 and allows `size_mb` of weights."""
    profile = yaml.safe_load((Path(__file__).parents[1] / "targets" / "profiles" / "x86-avx2.yaml").read_text())
    profile.update(name=name, aliases=[], preferred_precisions=["fp32"], channel_alignment=2,
                   budgets={"size_mb": size_mb, "latency_ms": 50})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(profile))
    return str(path)


@pytest.fixture(scope="module")
def sliced_run(tmp_path_factory):
    """Train, then slice into three widths, for three targets whose size budgets admit one, two and three of them."""
    folder = tmp_path_factory.mktemp("slice")
    model = build_model(make_spec(MODEL["arch"], 1, 10, MODEL["kwargs"]))
    supernet = Supernet(model, find_groups(model, torch.zeros(1, *SHAPE), keep=["fc"]), [], align=2)
    sizes = [fp32_bytes(supernet.extract(SubNet(w))[0]) / 1e6 for w in WIDTHS]
    budgets = [(sizes[0] + sizes[1]) / 2, (sizes[1] + sizes[2]) / 2, 10 * sizes[2]]
    targets = [target_file(folder, f"t{i}", budget) for i, budget in enumerate(budgets)]
    stages = [{"type": "train", "epochs": 2, "lr": 0.1},
              {"type": "slice", "widths": WIDTHS, "samples_per_step": 1, "bn_recalibration_batches": 4, "epochs": 2}]
    config = tiny_pipeline(model=MODEL, stages=stages, target=None, data=DATA,
                           export={"formats": ["onnx"], "latency_runs": 2, "latency_batch_sizes": [1]})
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(config))
    run_dir = folder / "run"
    assert main([str(folder / "pipeline.yaml"), "--run-dir", str(run_dir), "--quiet", "--target", ",".join(targets)]) == 0
    return run_dir, json.loads((run_dir / "report.json").read_text()), sizes


def slice_record(report: dict) -> dict:
    return next(s for s in report["stages"] if s["type"] == "slice")


def test_three_targets_deploy_three_sub_networks_within_their_budgets(sliced_run):
    run_dir, report, sizes = sliced_run
    chosen = slice_record(report)["metrics"]["chosen"]
    assert chosen == {"t0": "w0.25", "t1": "w0.5", "t2": "w1"}
    for (target, name), size in zip(chosen.items(), sizes):
        deploy = report["deployments"][target]
        assert deploy["variant"] == (None if target == "t0" else name)  # the first target's choice is the primary model
        artifact = next(a for a in report["artifacts"] if a["path"] == deploy["path"])
        assert artifact["status"] == "ok" and artifact["parity"]["max_abs_diff"] < 1e-4
        spec = json.loads({p.key: p.value for p in onnx.load(deploy["path"]).metadata_props}["compress.spec"])
        assert fp32_bytes(build_model(ModelSpec.from_json(spec))) / 1e6 == pytest.approx(size)  # the file says what it is


def test_every_sub_network_is_measured_and_saved(sliced_run):
    run_dir, report, _ = sliced_run
    val = load_data(DataConfig(**DATA), seed=0).val
    subnets = slice_record(report)["metrics"]["subnets"]
    assert list(subnets) == ["w0.25", "w0.5", "w1"]
    shares = [subnets[n]["macs_share"] for n in subnets]
    assert shares == sorted(shares) and shares[-1] == 1.0
    for name, m in subnets.items():
        assert m["host_latency_ms"] > 0 and set(m["estimated"]) == {"t0", "t1", "t2"} and m["bn_batches"] == 4
    stage = next((run_dir / "stages").glob("*-slice"))
    for name in ["w0.5", "w1"]:
        model, spec, _ = load_model_dir(stage / VARIANTS / name)
        saved = next(v for v in report["variants"] if v["name"] == name)
        assert evaluate(model, val)["accuracy"] == pytest.approx(saved["metrics"]["val_accuracy"])
        assert spec.arch == "resnet_s"


def test_batchnorm_recalibration_rescues_the_narrow_sub_networks(sliced_run):
    """Statistics inherited from the full network leave a narrow slice near chance; recomputing them on 4 batches
    brings it back (the report keeps both figures)."""
    subnets = slice_record(sliced_run[1])["metrics"]["subnets"]
    for name in ["w0.25", "w0.5"]:
        assert subnets[name]["val_accuracy_inherited_bn"] < 0.2 and subnets[name]["bn_gain"] > 0.1


def test_report_html_names_each_target_s_sub_network(sliced_run):
    html = (sliced_run[0] / "report.html").read_text()
    assert "chose, per target: t0: <code>w0.25</code>, t1: <code>w0.5</code>, t2: <code>w1</code>" in html
    assert "kept at full width: <code>fc</code>" in html
