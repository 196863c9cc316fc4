"""The prune stage: schedule, masks, N:M, channel pruning, rebuild without pickle, its errors, and train -> prune
through the command line."""
import copy
import dataclasses
import json
from contextlib import contextmanager
from typing import Iterator

import pytest
import torch
from torch import nn

from compress.checkpoint import load_model_dir, save_model_dir
from compress.cli import main
from compress.data import Split
from compress.errors import ConfigError, ModelError
from compress.methods.pruning.blocks import choose_blocks, droppable_blocks
from compress.methods.budget import macs_goal
from compress.methods.pruning.channels import check_rebuilds, shapes_for, trial
from compress.methods.pruning.masks import MaskPruning, follows_nm, layers_in_order, nm_violations
from compress.methods.pruning.schedule import ScheduleConfig, schedule, sparsity_at
from compress.metrics import count_macs, layer_costs
from compress.models import MODELS, build_model, make_spec
from compress.models.resize import apply_resize, resize_changes, shape_attrs
from compress.models.spec import ModelSpec, Resize
from compress.pipeline_file import load_pipeline
from compress.stages.prune import PruneConfig, PruneStage
from compress.targets.cost import estimate_latency_ms
from compress.training import Callback, Trainer, TrainConfig, predict
from conftest import tiny_pipeline

RESNET = make_spec("resnet_s", 1, 10, {"widths": [8, 16], "depths": [1, 1]})
RESNET16 = make_spec("resnet_s", 1, 10, {"widths": [16, 32], "depths": [1, 1]})  # room for channel alignment 8
CNN = make_spec("cnn_s", 1, 10, {"channels": [8, 16]})  # layers 0.0, 2.0, 5


def resized(spec: ModelSpec) -> dict:
    """Every module shape the spec's resize transforms record, merged."""
    return {k: v for t in spec.transforms if t.kind == "resize" for k, v in t.modules.items()}


def dropped(spec: ModelSpec) -> list[str]:
    return [name for t in spec.transforms if t.kind == "drop" for name in t.modules]


def kinds(spec_json: dict) -> list[str]:
    """The kinds of the transforms a spec in report.json records, in order."""
    return [t["kind"] for t in spec_json["transforms"]]


class Branchy(nn.Module):
    """A user model with a residual addition, a concatenation, depthwise and grouped convolutions and a hidden linear layer."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16))
        self.grouped = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=2), nn.BatchNorm2d(16), nn.ReLU())
        self.mix = nn.Conv2d(32, 32, 1)
        self.hidden = nn.Linear(32, 32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x + self.depthwise(x), self.grouped(x)], 1)
        return self.fc(self.hidden(self.mix(x).relu().mean((2, 3))).relu())


class ConcatGrouped(nn.Module):
    """Two branches concatenated into a 4-group convolution, then a pointwise and a grouped convolution (ResNeXt-like)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, groups: int = 8):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(64, 64, 3, 2, 1, groups=4), nn.BatchNorm2d(64), nn.ReLU())
        self.point = nn.Sequential(nn.Conv2d(64, 64, 1), nn.BatchNorm2d(64), nn.ReLU())
        self.grouped8 = nn.Sequential(nn.Conv2d(64, 64, 3, 2, 1, groups=groups), nn.BatchNorm2d(64), nn.ReLU())
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.grouped(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(self.grouped8(self.point(x)).mean((2, 3)))


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(x.view(-1, 16))  # hard-coded width: breaks once channels are removed


class HardCoded(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = Head()

    def forward(self, x):
        return self.head(self.conv(x))


class Untracked(HardCoded):
    def forward(self, x):
        with torch.no_grad():  # torch-pruning follows autograd: it sees nothing here
            return super().forward(x)


def branchy(in_channels: int, num_classes: int) -> nn.Module:
    return Branchy(in_channels, num_classes)


def concat_grouped(in_channels: int, num_classes: int, groups: int = 8) -> nn.Module:
    return ConcatGrouped(in_channels, num_classes, groups)


def hard_coded(in_channels: int, num_classes: int) -> nn.Module:
    return HardCoded(in_channels, num_classes)


def untracked(in_channels: int, num_classes: int) -> nn.Module:
    return Untracked(in_channels, num_classes)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine two threads spin: about 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def ctx(ctx):
    """The shared `ctx` cut to 64 training and validation examples in batches of 8: eight quick steps per epoch."""
    ctx.data = dataclasses.replace(ctx.data, train=ctx.data.train.head(64), val=ctx.data.val.head(64))
    ctx.data_config = ctx.data_config.model_copy(update={"batch_size": 8})
    return ctx


@contextmanager
def stage_callback(callback: Callback) -> Iterator[None]:
    """Inside the block, every Trainer a stage builds also calls `callback`, after the stage's own."""
    trainer_init = Trainer.__init__

    def with_callback(self, *args, **kwargs):
        trainer_init(self, *args, **kwargs)
        self.callbacks.append(callback)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "__init__", with_callback)
        yield


def prune(ctx, spec, **config):
    torch.manual_seed(0)
    model = build_model(spec)
    return model, PruneStage(PruneConfig(type="prune", **config)).run(model, spec, ctx)


# --- schedule -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, initial, final, start, end, frequency, expected", [
    ("cubic", 0.0, 0.8, 0, 100, 25, [(0, 0.0), (25, 0.4625), (50, 0.7), (75, 0.7875), (100, 0.8)]),
    ("cubic", 0.0, 0.8, 0, 10, 4, [(0, 0.0), (4, 0.6272), (8, 0.7936), (10, 0.8)]),  # the last step always reaches final
    ("linear", 0.2, 0.6, 10, 30, 10, [(10, 0.2), (20, 0.4), (30, 0.6)]),
    ("one_shot", 0.0, 0.5, 40, 90, 10, [(40, 0.5)]),
])
def test_schedule_matches_hand_computed_values(kind, initial, final, start, end, frequency, expected):
    got = schedule(kind, initial, final, start, end, frequency)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [s for _, s in got] == pytest.approx([s for _, s in expected])
    assert sparsity_at(start - 1, kind, initial, final, start, end) == 0.0 and sparsity_at(end + 5, kind, initial, final, start, end) == final


def test_schedule_config_resolves_fractions_and_steps():
    assert ScheduleConfig().steps(80) == (0, 24)
    assert ScheduleConfig(start_step=5, end_step=20).steps(80) == (5, 20)
    assert ScheduleConfig(kind="one_shot", start=0.5).steps(80) == (40, 40)


# --- unstructured and N:M masks ---------------------------------------------------------------------------------------

class ZeroSpy(Callback):
    """Checks, right after each optimizer step and before the masks are re-applied, that masked weights are still zero."""

    def __init__(self, masking: MaskPruning):
        self.masking, self.checked = masking, 0

    def on_step_end(self, trainer):
        for name, w in self.masking.weights.items():
            assert not w[~self.masking.masks[name]].any(), name
        self.checked += 1


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_masked_weights_stay_zero_through_optimizer_steps(ctx, optimizer):
    torch.manual_seed(0)
    model = build_model(RESNET)
    layers = {"blocks.0.conv2": model.blocks[0].conv2, "fc": model.fc}
    masking = MaskPruning(layers, [(1, 0.5), (3, 0.7)])
    spy = ZeroSpy(masking)
    config = TrainConfig(epochs=1, optimizer=optimizer, lr=0.05, momentum=0.9, weight_decay=0.1)
    Trainer(model, config, ctx, callbacks=[spy, masking]).fit()  # spy runs before masking re-applies the masks
    assert spy.checked == 8 and masking.applied == [[1, 0.5], [3, 0.7]]
    for name, layer in layers.items():
        assert int((layer.weight == 0).sum()) == round(0.7 * layer.weight.numel())


def test_magnitude_reaches_exactly_the_final_sparsity_and_keeps_excluded_layers_dense(ctx):
    model, result = prune(ctx, RESNET, final_sparsity=0.75, schedule={"frequency": 2, "end": 0.75})
    m = result.metrics
    assert [t for t, _ in m["schedule"]] == [2, 4, 6] and m["schedule"][-1][1] == 0.75 and result.spec is None
    assert m["scope"] == ["blocks.0.conv1.0", "blocks.0.conv2", "blocks.1.conv1.0", "blocks.1.conv2", "blocks.1.shortcut.0"]
    for name in m["scope"]:
        n = model.get_submodule(name).weight.numel()
        assert m["layer_sparsity"][name] == round(0.75 * n) / n
    assert m["layer_sparsity"]["stem.0"] == m["layer_sparsity"]["fc"] == 0.0  # kept dense by default


def test_global_ranking_sets_the_sparsity_over_all_layers_together(ctx):
    model, result = prune(ctx, RESNET, final_sparsity=0.6, global_ranking=True, exclude=["fc"])
    m = result.metrics
    weights = [model.get_submodule(name).weight for name in m["scope"]]
    total = sum(w.numel() for w in weights)
    assert "stem.0" in m["scope"] and sum(int((w == 0).sum()) for w in weights) == round(0.6 * total)
    assert len({m["layer_sparsity"][name] for name in m["scope"]}) > 1  # one threshold, different shares per layer


def test_nm_checker():
    w = torch.tensor([[1.0, 0, 2, 0, 0, 3, 4, 0], [0, 0, 0, 1, 5, 6, 0, 0]])
    assert follows_nm(w, 2, 4) and not follows_nm(w, 1, 4)
    conv = nn.Conv2d(8, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(w[:, :, None, None])  # the pattern runs along the input channels
    assert follows_nm(conv.weight, 2, 4)
    dense = nn.Linear(8, 2)
    assert nm_violations({"conv": conv, "dense": dense, "odd": nn.Linear(6, 2)}, 2, 4) == ["dense"]  # 6 inputs: not eligible


def test_nm_pruning_ends_in_the_2_4_pattern_and_marks_the_spec(ctx):
    model, result = prune(ctx, RESNET, method="nm", schedule={"frequency": 3, "end": 0.75})
    m = result.metrics
    assert m["sparsity_pattern"] == "2:4" and m["nm_violations"] == [] and result.spec.sparsity.pattern == "2:4"
    assert m["schedule"][-1] == [6, 0.5] and {m["layer_sparsity"][name] for name in m["scope"]} == {0.5}
    for name in m["scope"]:
        assert follows_nm(model.get_submodule(name).weight, 2, 4)


@pytest.mark.parametrize("method", ["magnitude", "channel"])
def test_distillation_teaches_the_unpruned_models_predictions_rather_than_the_labels(ctx, method):
    """On labels that say nothing (every example class 0), a model pruned with `distill` and no weight on the labels
    keeps answering as the unpruned model did, while without it the model learns to answer 0."""
    torch.manual_seed(0)
    teacher = build_model(RESNET16)
    Trainer(teacher, TrainConfig(epochs=3, lr=0.05), ctx).fit()
    answers = predict(teacher, ctx.data.val).argmax(1)
    zeros = dataclasses.replace(ctx, data=dataclasses.replace(ctx.data, train=Split(ctx.data.train.x, torch.zeros_like(ctx.data.train.y))))
    settings = {"final_sparsity": 0.3} if method == "magnitude" else {"target_macs": 0.6, "round_to": 1}

    def pruned(distill):
        model = copy.deepcopy(teacher)
        PruneStage(PruneConfig(type="prune", method=method, epochs=3, lr=0.05, distill=distill, **settings)).run(model, RESNET16, zeros)
        return predict(model, ctx.data.val).argmax(1)

    assert (answers == 0).float().mean() < 0.5
    assert (pruned({"hard_label_weight": 0.0}) == answers).float().mean() >= 0.6  # 0.84 / 0.75 when written
    assert (pruned(None) == 0).float().mean() >= 0.9  # 1.0 when written


# --- structured channel pruning -------------------------------------------------------------------------------------

def test_channel_pruning_reaches_the_macs_target_and_rebuilds_without_pickle(ctx, tmp_path):
    model, result = prune(ctx, RESNET16, method="channel", target_macs=0.5, round_to=1, schedule={"frequency": 2, "end": 0.75})
    m = result.metrics
    assert 0.45 <= m["macs_ratio"] <= 0.5 and m["goal"] == {"key": "target_macs", "value": 0.5, "reached": m["macs_ratio"]}
    assert [t for t, _ in m["schedule"]] == [2, 4, 6] and m["schedule"][-1][1] == m["channel_ratio"]
    assert m["layer_sparsity"]["fc"] == 0.0 and model.fc.out_features == 10
    assert resized(result.spec)["stem.0"]["out_channels"] < 16
    save_model_dir(tmp_path / "ckpt", model, result.spec, {})
    rebuilt, rebuilt_spec, _ = load_model_dir(tmp_path / "ckpt")
    x = ctx.data.val.x[:8]
    assert rebuilt_spec == result.spec and torch.allclose(rebuilt.eval()(x), model.eval()(x), atol=1e-6)


def test_filling_the_budget_widens_groups_until_no_further_alignment_unit_fits():
    model, example = build_model(make_spec("resnet_s", 1, 10, {"widths": [32, 64, 128], "depths": [1, 1, 1]})), torch.zeros(1, 1, 28, 28)
    goal = macs_goal(0.125, model, (1, 28, 28))
    ratio, none, uniform = shapes_for(model, example, ["fc"], [], 8, goal, None, fill=False)
    same, widened, filled = shapes_for(model, example, ["fc"], [], 8, goal, None)
    assert none == {} and same == ratio and widened
    assert goal.measure(uniform) < 0.11 < 0.12 < goal.measure(filled) <= 0.125  # rounding to 8 had left 15% unspent
    before, after = shape_attrs(model), shape_attrs(filled)
    convs = [name for name in after if isinstance(model.get_submodule(name), nn.Conv2d)]
    assert all(after[name]["out_channels"] % 8 == 0 for name in convs)
    for name in convs:  # one more unit on any group breaks the goal
        if after[name]["out_channels"] < before[name]["out_channels"]:
            wider = trial(model, example, ["fc"], ratio, 8, layer_ratios={
                **widened, name: 1 - (after[name]["out_channels"] + 8.5) / before[name]["out_channels"]})
            assert shape_attrs(wider) == after or not goal.met(wider), name


def test_gradual_channel_pruning_ends_at_the_filled_shapes(ctx):
    settings = dict(method="channel", target_macs=0.5, round_to=8, schedule={"frequency": 2, "end": 0.75})
    model, result = prune(ctx, RESNET16, **settings)
    _, plain = prune(ctx, RESNET16, fill_budget=False, **settings)
    m, example = result.metrics, torch.zeros(1, 1, 28, 28)
    planned = trial(build_model(RESNET16), example, ["fc"], m["channel_ratio"], 8, layer_ratios=m["widened"])
    assert m["widened"] and plain.metrics["widened"] == {} and shape_attrs(model) == shape_attrs(planned)
    assert plain.metrics["macs_ratio"] < 0.4 < m["macs_ratio"] <= 0.5 and m["goal"]["reached"] == m["macs_ratio"]


@pytest.mark.parametrize("arch", [name for name in MODELS.names() if not name.startswith("mamba")])  # CNNs: Mamba
def test_every_built_in_model_can_be_channel_pruned_and_rebuilt(arch):                              # is distilled
    spec = make_spec(arch, 1, 10)
    model = build_model(spec)
    output_layer = list(layers_in_order(model, (1, 28, 28)))[-1:]
    pruned = trial(model, torch.zeros(1, 1, 28, 28), output_layer, 0.5, 8)
    resized_spec = spec.then(Resize(modules=resize_changes(shape_attrs(model), shape_attrs(pruned))))
    check_rebuilds(pruned, resized_spec)
    build_model(resized_spec).load_state_dict(pruned.state_dict())
    assert count_macs(pruned, (1, 28, 28)) < 0.5 * count_macs(model, (1, 28, 28))


def test_channel_pruning_in_nhwc_keeps_every_weight_nhwc_after_each_pruning_step(ctx):
    layouts = []

    class Layout(Callback):
        def on_batch_start(self, trainer, batch):
            kernels = [p for p in trainer.model.parameters() if p.dim() == 4 and p.shape[1] > 1]
            layouts.append(all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels))

    with stage_callback(Layout()):
        model, result = prune(ctx, RESNET16, method="channel", target_macs=0.5, round_to=1, channels_last=True,
                              schedule={"frequency": 2, "end": 0.75})
    assert len(result.metrics["schedule"]) == 3 and layouts and all(layouts)  # torch-pruning's slices come out NCHW
    assert all(p.is_contiguous() for p in model.parameters())


def test_channel_pruning_to_a_latency_target(ctx):
    precision = ctx.target.preferred_precisions[0]
    budget = 0.6 * estimate_latency_ms(layer_costs(build_model(RESNET16), (1, 28, 28)), precision, ctx.target)
    model, result = prune(ctx, RESNET16, method="channel", target_latency_ms=budget)
    goal = result.metrics["goal"]
    assert goal["key"] == "target_latency_ms" and goal["value"] == budget
    assert goal["reached"] == estimate_latency_ms(layer_costs(model, (1, 28, 28)), precision, ctx.target) <= budget


def test_channel_counts_round_to_the_target_alignment(ctx):
    model, result = prune(ctx, RESNET16, method="channel", final_sparsity=0.3)  # x86-cpu: channel_alignment 8
    assert result.metrics["round_to"] == 8
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m is not model.stem[0]:
            assert m.out_channels % 8 == 0 and m.in_channels % 8 == 0


def test_round_to_min_lets_layers_at_or_below_the_alignment_shrink(ctx):
    keys = {"method": "channel", "final_sparsity": 0.5, "round_to": 16, "schedule": {"kind": "one_shot"}}
    with pytest.raises(ConfigError, match="changes no layer"):  # cnn_s [8, 16]: both layers at or below 16 channels
        prune(ctx, CNN, **keys)
    lowered, result = prune(ctx, CNN, **keys, round_to_min=4)
    assert [lowered.get_submodule(n).out_channels for n in ("0.0", "2.0")] == [4, 8] and result.metrics["round_to_min"] == 4
    assert result.metrics["narrower_than_alignment"] == ["0.0"]


@pytest.mark.parametrize("importance", ["l1", "bn_scale", "taylor"])
def test_channel_pruning_of_a_user_model_with_branches(ctx, tmp_path, importance):
    spec = make_spec("python:test_prune:branchy", 1, 10)
    model, result = prune(ctx, spec, method="channel", final_sparsity=0.5, importance=importance, round_to=2,
                          schedule={"kind": "one_shot"})
    resize = resized(result.spec)
    assert resize["grouped.0"]["groups"] == 2 and resize["depthwise.0"]["groups"] == resize["depthwise.0"]["out_channels"] == 8
    assert model.fc.out_features == 10 and "fc" not in resize or resize["fc"] == {"in_features": 16, "out_features": 10}
    if importance != "bn_scale":  # bn_scale ranks only channels that feed a batch norm: the hidden linear layer stays
        assert resize["hidden"]["out_features"] == 16
    save_model_dir(tmp_path / "ckpt", model, result.spec, {})
    rebuilt, _, _ = load_model_dir(tmp_path / "ckpt")
    x = ctx.data.val.x[:4]
    assert torch.allclose(rebuilt.eval()(x), model.eval()(x), atol=1e-5)


def test_grouped_convolutions_after_a_concatenation_shrink_in_whole_groups(ctx, tmp_path):
    spec = make_spec("python:test_prune:concat_grouped", 1, 10)
    model, result = prune(ctx, spec, method="channel", target_macs=0.25, schedule={"frequency": 2, "end": 0.75})  # alignment 8
    assert result.metrics["macs_ratio"] <= 0.25 and result.metrics["round_to"] == 8 and len(result.metrics["schedule"]) > 1
    for name, groups in (("grouped.0", 4), ("grouped8.0", 8)):
        conv = model.get_submodule(name)
        assert conv.groups == groups and conv.in_channels < 64 and conv.in_channels % 8 == conv.out_channels % 8 == 0
    assert model.a[0].out_channels == model.b[0].out_channels == model.grouped[0].in_channels // 2
    save_model_dir(tmp_path / "ckpt", model, result.spec, {})
    rebuilt, _, _ = load_model_dir(tmp_path / "ckpt")
    x = ctx.data.val.x[:4]
    assert torch.allclose(rebuilt.eval()(x), model.eval()(x), atol=1e-5)


def test_resize_round_trip_and_errors():
    model = build_model(CNN)
    before = shape_attrs(model)
    assert before["0.0"] == {"in_channels": 1, "out_channels": 8, "groups": 1} and before["5"] == {"in_features": 16, "out_features": 10}
    resize = {"0.0": {"out_channels": 4}, "0.1": {"num_features": 4}, "2.0": {"in_channels": 4}}
    apply_resize(model, resize)
    assert model[0][0].weight.shape == (4, 1, 3, 3) and model[0][1].running_mean.shape == (4,) and model[2][0].weight.shape == (16, 4, 3, 3)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert set(resize_changes(before, shape_attrs(model))) == {"0.0", "0.1", "2.0"}
    with pytest.raises(ModelError, match="spec resize: the model has no module 'nope'"):
        build_model(CNN.then(Resize(modules={"nope": {"out_channels": 1}})))
    with pytest.raises(ModelError, match=r"'1' \(MaxPool2d\) has no resizable attribute"):
        build_model(CNN.then(Resize(modules={"1": {"kernel_size": 3}})))



# --- block dropping (depth) -----------------------------------------------------------------------------------------

def test_droppable_blocks_are_the_shape_preserving_modules_with_layers():
    model = build_model(RESNET16)  # blocks.0 keeps 16 channels at 28x28; blocks.1 halves the resolution
    assert droppable_blocks(model, (1, 28, 28)) == ["blocks.0", "blocks.0.conv1", "blocks.0.conv1.0", "blocks.0.conv2", "blocks.1.conv2"]
    assert choose_blocks(["a", "a.b", "c"], 2, {"a": 3, "a.b": 2, "c": 1}.get) == ["a", "c"]  # never nested
    with pytest.raises(ConfigError, match="3 blocks requested, but only 2 can be dropped"):
        choose_blocks(["a", "a.b", "c"], 3, {"a": 3, "a.b": 2, "c": 1}.get)
    with pytest.raises(ConfigError, match="'blocks.1' cannot be dropped.*droppable ones are: a, c"):
        choose_blocks(["a", "c"], ["blocks.1"], len)
    with pytest.raises(ConfigError, match="'a' and 'a.b' are nested"):
        choose_blocks(["a", "a.b"], ["a", "a.b"], len)


@pytest.mark.parametrize("arch", ["resnet_s", "mobilenet_s"])
def test_every_built_in_residual_model_can_drop_blocks(ctx, arch):
    spec = make_spec(arch, 1, 10)
    model, result = prune(ctx, spec, method="channel", final_sparsity=0.25, drop_blocks=2, schedule={"kind": "one_shot"}, epochs=1)
    dropped = result.metrics["dropped_blocks"]
    assert len(dropped) == 2 and all(isinstance(model.get_submodule(name), nn.Identity) for name in dropped)
    rebuilt = build_model(result.spec)
    rebuilt.load_state_dict(model.state_dict())
    x = ctx.data.val.x[:4]
    assert torch.allclose(rebuilt.eval()(x), model.eval()(x), atol=1e-5)


def test_a_dropped_block_fades_on_the_schedule_and_is_gone_from_model_and_spec(ctx, tmp_path):
    gates = []

    class Watch(Callback):
        def on_before_optimizer_step(self, trainer):  # the gate this step's forward pass used
            gates.append(next(c for c in trainer.callbacks if type(c).__name__ == "BlockDropping").gate)

    config = PruneConfig(type="prune", method="channel", target_macs=0.3, round_to=1, drop_blocks=1,
                         schedule={"frequency": 2, "end": 0.75})
    stage = PruneStage(config)
    torch.manual_seed(0)
    model = build_model(RESNET16)
    full_macs = count_macs(model, (1, 28, 28))
    with stage_callback(Watch()):
        result = stage.run(model, RESNET16, ctx)
    assert result.metrics["dropped_blocks"] == ["blocks.0"] and isinstance(model.blocks[0], nn.Identity)
    assert gates == pytest.approx([(1 - t / 6) ** 3 for t in range(7)] + [0.0])  # cubic, reaching 0 at step 6 of 8
    assert dropped(result.spec) == ["blocks.0"] and result.metrics["layer_sparsity"]["blocks.0.conv2"] == 1.0
    assert 0.25 <= count_macs(model, (1, 28, 28)) / full_macs <= 0.3 == result.metrics["goal"]["value"]  # dropping alone: 0.42
    assert model.stem[0].out_channels < 16
    save_model_dir(tmp_path / "ckpt", model, result.spec, {})
    rebuilt, _, _ = load_model_dir(tmp_path / "ckpt")
    x = ctx.data.val.x[:8]
    assert isinstance(rebuilt.blocks[0], nn.Identity) and torch.allclose(rebuilt.eval()(x), model.eval()(x), atol=1e-6)


# --- bad input ------------------------------------------------------------------------------------------------------

BAD_CONFIG = [
    # (prune stage keys, words in the error)
    ({"final_sparsity": 1.2}, ["stages[0].final_sparsity: must be in [0, 1), got 1.2"]),
    ({"final_sparsity": -0.1}, ["stages[0].final_sparsity: must be in [0, 1), got -0.1"]),
    ({"schedule": {"end": 1.5}}, ["stages[0].schedule.end: must be a fraction of the stage's training steps in [0, 1]", "got 1.5"]),
    ({"schedule": {"start": 0.5, "end": 0.5}}, ["stages[0].schedule: start (0.5) must come before end (0.5)"]),
    ({"schedule": {"kind": "exponential"}}, ["stages[0].schedule.kind", "'cubic', 'linear' or 'one_shot'"]),
    ({"schedule": {"frequency": 0}}, ["stages[0].schedule.frequency", "greater than 0"]),
    ({"schedule": {"initial_sparsity": 0.6}, "final_sparsity": 0.5}, ["schedule.initial_sparsity 0.6 is above the final sparsity 0.5"]),
    ({"method": "prnue"}, ["stages[0].method", "'magnitude', 'nm' or 'channel'"]),
    ({"target_macs": 0.25}, ["stages[0]: target_macs applies to method channel only, not magnitude"]),
    ({"method": "channel", "target_macs": 1.5}, ["stages[0].target_macs: must be the share of MACs to keep, in (0, 1), got 1.5"]),
    ({"method": "channel", "final_sparsity": 0.5, "target_macs": 0.25}, ["give one of final_sparsity, target_macs, target_latency_ms"]),
    ({"method": "channel", "importance": "l3"}, ["stages[0].importance", "'l1', 'l2', 'bn_scale' or 'taylor'"]),
    ({"method": "nm", "final_sparsity": 0.75}, ["final_sparsity: pattern 2:4 means sparsity 0.5; leave final_sparsity out"]),
    ({"method": "nm", "pattern": "4:2"}, ["stages[0].pattern: must be 'N:M' with 0 < N < M"]),
    ({"importance": "l1"}, ["importance applies to method channel only"]),
    ({"drop_blocks": 1}, ["drop_blocks applies to method channel only"]),
    ({"method": "channel", "drop_blocks": 0}, ["stages[0].drop_blocks", "greater than 0"]),
    ({"exclude": "fc"}, ["stages[0].exclude", "valid list"]),
    ({"spasity": 0.5}, ["stages[0].spasity: unknown key"]),
]


@pytest.mark.parametrize("keys, words", BAD_CONFIG)
def test_bad_config_is_caught_at_validation(write_pipeline, keys, words):
    path = write_pipeline(tiny_pipeline(stages=[{"type": "prune", **keys}]))
    message = str(pytest.raises(ConfigError, load_pipeline, path).value)
    for word in words:
        assert word in message


BAD_FOR_MODEL = [
    # (model spec, prune stage keys, words in the error)
    (CNN, {"exclude": ["stem.*"]}, ["stage 'train': exclude[0] 'stem.*' matches no conv or linear layer; the layers are: 0.0, 2.0, 5"]),
    (CNN, {"include": ["blocks.*"]}, ["include[0] 'blocks.*' matches no conv or linear layer"]),
    (CNN, {"include": ["5"], "exclude": ["5"]}, ["include/exclude leave no conv or linear layer to prune"]),
    (CNN, {"schedule": {"start_step": 2, "end_step": 1000}}, ["schedule ends at step 1000, after training ends (step 8)"]),
    (CNN, {"method": "nm", "include": ["0.0"], "exclude": []}, ["no layer in scope can hold the 2:4 pattern"]),
    (CNN, {"method": "channel", "target_macs": 0.01}, ["target_macs 0.01 cannot be reached", "(at the alignment of 8 channels, 8 -> 8 channels",
                                                       "of the MACs", "set round_to_min"]),
    (make_spec("python:test_prune:concat_grouped", 1, 10, {"groups": 32}), {"method": "channel", "target_macs": 0.02},
     ["target_macs 0.02 cannot be reached", "grouped8.0 (grouped convolution with 32 groups: keeps a multiple of 32 channels",
      "take layers out of exclude", "method magnitude or nm"]),
    (CNN, {"method": "channel", "round_to": 4, "round_to_min": 4}, ["round_to_min: 4 must be below the alignment it lowers, 4 (round_to)"]),
    (CNN, {"method": "channel", "target_latency_ms": 1e-6}, ["target_latency_ms 1e-06 cannot be reached"]),
    (RESNET, {"method": "channel", "drop_blocks": ["blocks.1"]},
     ["drop_blocks: 'blocks.1' cannot be dropped", "the droppable ones are: blocks.0, blocks.0.conv1, blocks.0.conv1.0"]),
    (CNN, {"method": "channel", "drop_blocks": 1}, ["drop_blocks: 1 blocks requested, but only 0 can be dropped without one holding another (droppable: none)"]),
    (make_spec("python:test_prune:hard_coded", 1, 10), {"method": "channel"},
     ["the model fails after channel pruning: module 'head' (Head) fails with RuntimeError", "Exclude the layers that feed it"]),
    (make_spec("python:test_prune:untracked", 1, 10), {"method": "channel"},
     ["removing 50.0% of each layer's channels changes no layer", "no torch.no_grad in forward"]),
]


@pytest.mark.parametrize("spec, keys, words", BAD_FOR_MODEL)
def test_errors_that_need_the_model_come_before_training(ctx, spec, keys, words):
    model = build_model(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError) as e:
        PruneStage(PruneConfig(type="prune", **keys)).run(model, spec, ctx)
    for word in words:
        assert word in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was trained


# --- end to end ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prune, check", [
    ({"method": "channel", "target_macs": 0.5}, lambda report, m: m["macs_ratio"] <= 0.5 and kinds(report["model"]) == ["resize"]),
    ({"method": "channel", "target_macs": 0.3, "drop_blocks": ["blocks.0"]},
     lambda report, m: m["macs_ratio"] <= 0.3 and kinds(report["model"]) == ["resize", "drop"] and m["dropped_blocks"] == ["blocks.0"]
     and report["artifacts"][0]["status"] == "ok"),
    ({"method": "nm"}, lambda report, m: m["sparsity_pattern"] == report["model"]["sparsity"]["pattern"] == "2:4"),
    ({"method": "channel", "target_macs": 0.3, "drop_blocks": 1, "channels_last": True},  # pruned while training in NHWC
     lambda report, m: m["macs_ratio"] <= 0.3 and report["artifacts"][0]["status"] == "ok"),
])
def test_train_then_prune_through_the_cli(write_pipeline, tmp_path, prune, check):
    stages = [{"type": "train", "epochs": 1, "lr": 0.05},
              {"type": "prune", "epochs": 1, "schedule": {"frequency": 2, "end": 0.75}, **prune}]
    path = write_pipeline(tiny_pipeline(model={"arch": "resnet_s", "kwargs": RESNET16.kwargs}, stages=stages))
    run = [str(path), "--run-dir", str(tmp_path / "run"), "--quiet"]
    assert main(run) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    train, pruned = report["stages"]
    m = pruned["metrics"]
    assert check(report, m) and m["schedule"][-1][0] == 6 and m["layer_sparsity"]["fc"] == 0.0
    assert m["macs"] <= train["metrics"]["macs"] and m["val_accuracy"] > 0
    (onnx,) = report["artifacts"]
    assert onnx["parity"]["top1_agreement"] == 1.0 and onnx["parity"]["max_abs_diff"] < 1e-4
    assert main(run) == 0  # resume: the pruned model is rebuilt from spec.json and safetensors
    again = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [s["status"] for s in again["stages"]] == ["resumed", "resumed"]
    assert again["artifacts"][0]["accuracy"] == onnx["accuracy"]
