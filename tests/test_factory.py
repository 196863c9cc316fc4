"""NN-Factory assembly: a module choice runs as a mask on the supernet exactly as its extracted model does, with the
costs the cost model gives that model; the generator's switch moves to the order with the lower loss, it trains on
a tiny supernet and no assembled model is ever over its budget; a bigger budget never gives a smaller model; a
class-subset head predicts its classes' logits; and the stage and `compress assemble` work end to end from the CLI."""
import json
import random

import pytest
import torch
import yaml

from compress.checkpoint import VARIANTS, load_model_dir
from compress.cli import main
from compress.methods.assembly.assemble import Factory, assemble, fit_budget, prefix_choice
from compress.methods.assembly.generator import (Generator, GeneratorTraining, Probe, Scenario, at_budget, context_size,
                                                context_vector, copy_state, first_over, fitted, on_batch_statistics, path_loss,
                                                reference_costs, routed, scenario_loss, train_generator)
from compress.methods.assembly.modules import Choice, ModularSupernet
from compress.methods.budget import target_costs
from compress.methods.slicing.supernet import nested
from compress.metrics import count_macs
from compress.models import build_model, make_spec
from compress.targets import resolve
from conftest import TINY_DATA, tiny_pipeline

SHAPE = (1, 28, 28)
TARGETS = [resolve("x86-avx512-vnni"), resolve("jetson-orin-nano")]


def tiny_net(seed: int = 0) -> ModularSupernet:
    torch.manual_seed(seed)
    model = build_model(make_spec("resnet_s", 1, 10, {"widths": [8, 16], "depths": [2, 2]}))
    return ModularSupernet(nested(model, SHAPE, torch.device("cpu"), 4, depth=True), 4, SHAPE)


@pytest.fixture(scope="module")
def training(tiny_data):
    """A generator trained 40 steps on a random-weight tiny supernet, and what its training returned."""
    net = tiny_net()
    generator = Generator(context_size(10), net.sizes, net.depths, hidden=16)
    result = train_generator(net, generator, tiny_data.train, 32, TARGETS, 10, GeneratorTraining(steps=40), 0,
                             torch.device("cpu"), None)
    return Factory(net, generator, 10), result


@pytest.fixture(scope="module")
def trained(training):
    return training[0]


def random_choice(net: ModularSupernet, rng: random.Random) -> Choice:
    return Choice(tuple(rng.randint(1, n) for n in net.sizes), tuple(rng.randint(1, d) for d in net.depths))


def test_masked_supernet_computes_the_extracted_model_and_its_costs(tiny_data):
    net, rng, x = tiny_net(), random.Random(0), tiny_data.val.x[:16]
    for _ in range(4):
        choice = random_choice(net, rng)
        dense, _ = net.extract(choice)
        net.supernet.model.train(), dense.train()  # BatchNorm on batch statistics in both
        with torch.no_grad(), net.masked(*net.masks_of(choice)) as masked:
            assert torch.allclose(masked(x), dense(x), atol=1e-5), choice
        terms = net.costs.terms(*net.masks_of(choice))
        assert float(terms["macs"]) == pytest.approx(count_macs(dense, SHAPE), rel=1e-6)
        for target in TARGETS:
            expected = target_costs(dense, target, SHAPE)["latency_ms"]
            assert float(net.costs.cost("latency_ms", terms, target)) == pytest.approx(expected, rel=1e-6)


def test_gradients_reach_the_module_masks(tiny_data):
    net = tiny_net()
    masks, gates = net.masks_of(net.largest)
    masks = [m.clone().requires_grad_(True) for m in masks]
    with net.masked(masks, gates) as masked:
        masked(tiny_data.train.x[:8]).sum().backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in masks)


def assert_nested(path) -> None:
    counts = [path.choice(path.top * i / 63) for i in range(64)]
    for a, b in zip(counts, counts[1:]):  # every module and block only ever enters
        assert all(x <= y for x, y in zip(a.modules + a.blocks, b.modules + b.blocks)), (a, b)


def test_the_untrained_orders_widen_uniformly_around_whole_blocks_and_stay_nested():
    net = tiny_net()
    paths, switch = Generator(context_size(10), net.sizes, net.depths)(context_vector(Scenario("macs", 0.5, TARGETS[0]), 10))
    width_first, depth_first = paths["width first"], paths["depth first"]
    assert float(switch.detach()) == pytest.approx(0.5)
    assert width_first.choice(0.99) == Choice(tuple(net.sizes), (1, 1)) and width_first.choice(width_first.top) == net.largest
    assert depth_first.choice(0.24).blocks == (1, 1) and depth_first.choice(0.28) == Choice((1, 1, 1, 1, 1, 1), (2, 2))
    assert depth_first.choice(depth_first.top) == net.largest
    for path in (width_first, depth_first):
        half = path.choice(0.5)
        assert all(abs(n / size - 0.5) <= 0.5 / size for n, size in zip(half.modules, net.sizes)), half
        assert_nested(path)


def test_the_switch_routes_budgets_to_both_orders_and_the_cost_never_falls():
    net = tiny_net()
    paths, switch = Generator(context_size(10), net.sizes, net.depths).plan(context_vector(Scenario("macs", 0.5, TARGETS[0]), 10))
    full, floor = (float(net.costs.terms(*net.masks_of(c))["macs"]) for c in (net.largest, net.smallest))
    fit = lambda path, share: fitted(net, path, "macs", None, share * full)  # noqa: E731
    shares = [floor / full + (1 - floor / full) * k / 40 for k in range(40)] + [1.0]
    routes = [routed(paths, switch, share, floor / full, fit) for share in shares]
    costs = [float(net.costs.terms(*net.masks_of(choice))["macs"]) for choice, _ in routes]
    assert costs == sorted(costs) and costs[-1] == full
    orders = [order for _, order in routes]
    assert orders[0] == "depth first" and orders[-1] == "width first"
    fill = lambda path, goal: ((path, goal), goal * (0.6 if path == "W" else 1.0))  # noqa: E731  width first fills 60%
    paths = {"width first": "W", "depth first": "D"}
    assert routed(paths, 0.5, 0.6, 0.1, fill) == (("D", 0.5), "depth first")  # 0.36 < 0.5: depth first's at the switch
    assert routed(paths, 0.5, 0.9, 0.1, fill) == (("W", 0.9), "width first")
    assert routed(paths, 0.05, 0.2, 0.1, fill) == (("W", 0.2), "width first")  # a switch below the floor


def test_training_solves_the_scale_that_meets_the_budget_and_differentiates_through_it():
    net = tiny_net()
    generator = Generator(context_size(10), net.sizes, net.depths, hidden=16)
    for kind in ("macs", "latency_ms", "size_kb"):
        full, floor = (float(net.costs.cost(kind, net.costs.terms(*net.masks_of(c)), TARGETS[1]))
                       for c in (net.largest, net.smallest))
        goal = floor + 0.4 * (full - floor)
        for order, path in generator(context_vector(Scenario(kind, 1.0, TARGETS[1]), 10))[0].items():
            w = at_budget(net, path, kind, TARGETS[1], goal, 0.02)
            cost = net.costs.cost(kind, net.costs.terms(*path.soft(w.detach(), 0.02)), TARGETS[1])
            assert float(cost.detach()) == pytest.approx(goal, rel=1e-3), (kind, order)
            generator.zero_grad()
            w.backward(retain_graph=True)
            assert sum(float(p.grad.abs().sum()) for p in (generator.widths.bias, generator.blocks.bias)) > 0, (kind, order)


@pytest.mark.parametrize("train_paths", [False, True])
def test_training_moves_the_switch_and_the_paths_only_when_asked(tiny_data, train_paths):
    net, scenario = tiny_net(), Scenario("latency_ms", 1.0, TARGETS[1], (0, 2, 5))
    generator, plan = Generator(context_size(10), net.sizes, net.depths, hidden=16), GeneratorTraining(1, train_paths=train_paths)
    full = float(net.costs.cost("latency_ms", net.costs.terms(*net.masks_of(net.largest)), TARGETS[1]))
    before, optimizer = copy_state(generator), torch.optim.Adam(generator.parameters_to_train(train_paths), lr=0.01)
    split = tiny_data.train.of_classes([0, 2, 5])
    with on_batch_statistics(net.supernet.model):
        for relative in (0.3, 0.6, 0.9):
            optimizer.zero_grad()
            scenario_loss(net, generator, context_vector(scenario, 10), scenario, TARGETS[1], full, relative, split.x[:32],
                          split.y[:32], plan)[0].backward()
            optimizer.step()
    moved = {name for name, value in copy_state(generator).items() if not torch.equal(value, before[name])}
    heads = {"widths.weight", "widths.bias", "blocks.weight", "blocks.bias"}
    assert "switch.bias" in moved and (heads <= moved if train_paths else not heads & moved), moved


def test_the_switch_moves_to_hand_a_budget_to_the_order_whose_loss_is_lower(tiny_data):
    net, scenario = tiny_net(), Scenario("macs", 0.3, TARGETS[0])
    generator = Generator(context_size(10), net.sizes, net.depths, hidden=16)
    context, plan = context_vector(scenario, 10), GeneratorTraining(steps=1)
    full = float(net.costs.terms(*net.masks_of(net.largest))["macs"])
    x, y = tiny_data.train.x[:64], tiny_data.train.y[:64]
    with on_batch_statistics(net.supernet.model):
        losses = {order: float(path_loss(net, path, scenario, None, 0.3 * full, x, y, plan)[0].detach())
                  for order, path in generator(context)[0].items()}
        assert abs(losses["width first"] - losses["depth first"]) > 1e-3  # different models at this budget
        optimizer = torch.optim.Adam(generator.switch.parameters(), lr=0.1)
        for _ in range(30):
            optimizer.zero_grad()
            scenario_loss(net, generator, context, scenario, None, full, 0.3, x, y, plan)[0].backward()
            optimizer.step()
    switch = generator.plan(context)[1]
    assert (switch < 0.3) == (losses["width first"] < losses["depth first"]), (switch, losses)


def test_training_keeps_the_checkpoint_that_scores_best_on_the_probe(training, tiny_data):
    factory, result = training
    scores = [entry["probe_accuracy"] for entry in result["history"]]
    assert len(scores) == 11 and result["probe_accuracy"] == max(scores)
    assert result["history"][0]["step"] == 0  # the untrained path competes too
    assert result["kept_step"] == result["history"][scores.index(max(scores))]["step"]
    plan, (full, floors) = GeneratorTraining(steps=40), reference_costs(factory.net, TARGETS)
    probe = Probe(factory.net, tiny_data.train, TARGETS, 10, plan, 0, full, floors, 32, torch.device("cpu"))
    assert probe.score(factory.generator) == pytest.approx(result["probe_accuracy"])


def test_no_assembled_model_is_over_its_budget(trained, tiny_data):
    rng = random.Random(1)
    smallest = trained.build(trained.net.smallest, None)[0]
    for i in range(20):
        kind, target = rng.choice(["macs", "latency_ms", "size_kb"]), rng.choice(TARGETS)
        floor = trained.cost(smallest, Scenario(kind, 1.0, target))
        full = trained.cost(trained.net.supernet.model, Scenario(kind, 1.0, target))
        classes = tuple(sorted(rng.sample(range(10), rng.randint(2, 9)))) if i % 2 else None
        scenario = Scenario(kind, rng.uniform(floor, full), target, classes)
        made = assemble(trained, scenario, tiny_data.train, 2, 32, torch.device("cpu"))
        assert made.cost <= scenario.value, (scenario, made)
        assert trained.cost(made.model, scenario) == pytest.approx(made.cost)
        assert made.model(tiny_data.val.x[:2]).shape == (2, len(classes) if classes else 10)


def test_the_cost_estimate_only_speeds_up_the_budget_fit(trained):
    """The mask-cost estimate finds the point along the path; the real cost decides it, so even a wrong estimate gives the
    choice that bisection on extracted models gives, in fewer extractions when the estimate is right."""
    rng = random.Random(2)
    for i in range(8):
        kind, target = rng.choice(["macs", "latency_ms", "size_kb"]), rng.choice(TARGETS)
        floor = trained.cost(trained.build(trained.net.smallest, None)[0], Scenario(kind, 1.0, target))
        full = trained.cost(trained.net.supernet.model, Scenario(kind, 1.0, target))
        scenario = Scenario(kind, rng.uniform(floor, full), target, (1, 4, 8) if i % 2 else None)
        choices, calls = trained.generator.plan(context_vector(scenario, 10))[0][("width first", "depth first")[i % 2]].along(), []

        def fits(choice):
            calls.append(choice)
            return trained.fits(choice, scenario)

        plain = fit_budget(trained, choices, fits)
        extractions = len(calls)
        estimates = {"mask costs": lambda c: trained.estimate(c, scenario) <= scenario.value,
                     "always fits": lambda c: True, "never fits": lambda c: False}
        for name, estimate in estimates.items():
            calls.clear()
            guess = first_over(lambda i: estimate(choices[i]), 0, len(choices))
            assert fit_budget(trained, choices, fits, guess) == plain, (name, scenario)
            if name == "mask costs":
                assert len(calls) <= min(3, extractions), scenario


def test_a_bigger_budget_never_gives_a_smaller_model(trained, tiny_data):
    for classes in (None, (0, 3, 7)):
        for kind in ("macs", "latency_ms"):
            target = TARGETS[1]
            floor = trained.cost(trained.build(trained.net.smallest, classes)[0], Scenario(kind, 1.0, target))
            full = trained.cost(trained.net.supernet.model, Scenario(kind, 1.0, target))
            macs = []
            for k in range(12):
                budget = floor + (full - floor) * k / 11
                made = assemble(trained, Scenario(kind, budget, target, classes), tiny_data.train, 0, 32, torch.device("cpu"))
                macs.append(count_macs(made.model, SHAPE))
            assert macs == sorted(macs), (kind, classes, macs)
            assert macs[-1] > macs[0]


def test_a_class_subset_head_keeps_its_classes_logits(trained, tiny_data):
    choice, x = trained.net.largest, tiny_data.val.x[:8]
    whole, _ = trained.build(choice, None)
    part, transforms = trained.build(choice, (7, 1, 4))
    whole.eval(), part.eval()
    with torch.no_grad():
        assert torch.allclose(part(x), whole(x)[:, [7, 1, 4]], atol=1e-6)
    spec = make_spec("resnet_s", 1, 10, {"widths": [8, 16], "depths": [2, 2]}).then(*transforms).for_classes([7, 1, 4])
    rebuilt = build_model(spec)
    rebuilt.load_state_dict(part.state_dict())
    subset = tiny_data.for_spec(spec).val
    assert set(subset.y.tolist()) <= {0, 1, 2} and len(subset) == sum(int(y in (7, 1, 4)) for y in tiny_data.val.y)


def test_the_prefix_rule_fits_and_is_uniform(trained):
    scenario = Scenario("macs", 0.4, TARGETS[0])
    choice = prefix_choice(trained, scenario)
    assert trained.cost(trained.build(choice, None)[0], scenario) <= 0.4
    shares = [n / size for n, size in zip(choice.modules, trained.net.sizes) if size > 1]
    assert max(shares) - min(shares) <= 0.5


FACTORY = {"type": "factory", "module_channels": 4, "generator": {"hidden": 16, "epochs": 1},
           "search": {"population": 4, "generations": 1, "samples": 64}, "bn_recalibration_batches": 2,
           "scenarios": [{"macs": 0.5}, {"latency_ms": 0.2, "target": "jetson-orin-nano"}, {"macs": 0.3, "classes": [0, 2, 5]}]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One CLI run: train, slice, factory with three scenarios on two targets."""
    folder = tmp_path_factory.mktemp("factory")
    pipeline = tiny_pipeline(model={"arch": "resnet_s", "kwargs": {"widths": [8, 16], "depths": [2, 2]}},
                             data={**TINY_DATA, "limit": 512},
                             stages=[{"type": "train", "epochs": 1},
                                     {"type": "slice", "widths": [0.5, 1.0], "depths": [1, 2], "epochs": 1,
                                      "bn_recalibration_batches": 2}, FACTORY],
                             export={"formats": ["onnx"], "variants": "all", "latency_runs": 2, "latency_batch_sizes": [1]})
    (folder / "p.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    assert main([str(folder / "p.yaml"), "--run-dir", str(folder / "run"), "--quiet", "--target",
                 "x86-avx512-vnni,jetson-orin-nano"]) == 0
    return folder / "run"


def test_the_stage_assembles_every_scenario_within_budget(run):
    report = json.loads((run / "report.json").read_text())
    stage = report["stages"][2]
    scenarios = stage["metrics"]["scenarios"]
    assert list(scenarios) == ["macs0.5", "latency0.2ms-jetson-orin-nano", "macs0.3-c0-2-5"]
    for name, m in scenarios.items():
        assert m["cost"] <= m["budget"]["value"] and m["assembly_seconds"] < 5, (name, m)
        assert m["prefix"]["cost"] <= m["budget"]["value"] and m["search"]["cost"] <= m["budget"]["value"]
    subset, spec, metrics = load_model_dir(run / "stages" / "03-factory" / VARIANTS / "macs0.3-c0-2-5")
    assert spec.classes == [0, 2, 5] and subset(torch.zeros(1, *SHAPE)).shape == (1, 3)
    onnx_rows = [a for a in report["artifacts"] if a["variant"] == "macs0.3-c0-2-5" and a["format"] == "onnx"]
    assert onnx_rows and all(a["status"] == "ok" and a["parity"]["top1_agreement"] == 1.0 for a in onnx_rows)
    assert all(d["variant"] != "macs0.3-c0-2-5" for d in report["deployments"].values()), "a class-subset model deployed"


def test_assemble_command_end_to_end(run, capsys, tmp_path):
    assert main(["assemble", str(run), "--target", "jetson-orin-nano", "--macs", "0.4", "--classes", "1,3"]) == 0
    out = capsys.readouterr().out
    for step in ("load", "generate", "repair", "bn", "export", "validate"):
        assert out.count(f"\n{step} ") + out.startswith(f"{step} ") == 1, out
    folder = run / "assembled" / "macs0.4-c1-3-jetson-orin-nano"
    report = json.loads((folder / "report.json").read_text())
    assert report["cost"] <= 0.4 and report["deploy"] and (folder / "model.fp32.onnx").is_file()
    assert report["model"]["classes"] == [1, 3]
    assert report["order"] in ("width first", "depth first") and f"({report['order']})" in out
    assert main(["assemble", str(run), "--target", "jetson-orin-nano", "--latency-ms", "1e-6"]) == 2
    assert "the smallest achievable is" in capsys.readouterr().err
    assert main(["assemble", str(run), "--target", "jetson-orin-nano", "--macs", "0.4", "--classes", "3,99"]) == 2
    assert "class 99 is out of range" in capsys.readouterr().err


def test_a_generator_of_another_version_is_refused_by_name(run, tmp_path, capsys):
    import hashlib
    import shutil

    from safetensors.torch import save as safetensors_bytes

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    folder = copy / "stages" / "03-factory"
    old = safetensors_bytes({"base.weight": torch.zeros(3, 16), "slope.weight": torch.zeros(3, 16)})
    (folder / "aux-generator.safetensors").write_bytes(old)
    meta = json.loads((folder / "spec.json").read_text())
    meta["files"]["aux-generator.safetensors"] = hashlib.sha256(old).hexdigest()
    (folder / "spec.json").write_text(json.dumps(meta))
    assert main(["assemble", str(copy), "--target", "jetson-orin-nano", "--macs", "0.4"]) == 2
    err = capsys.readouterr().err
    assert "aux-generator.safetensors: not a generator this version can load" in err and "--no-resume" in err
