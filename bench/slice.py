"""Slicing benchmark: one sorted (SortedNet) run against the same architecture fine-tuned separately at four widths.

Users slice a trained model, so every run starts from one converged resnet_s (trained once with augmentation and
cached; its training is reported, not counted). Per seed, the pipeline's `slice` stage fine-tunes it as a supernet
for E epochs (sandwich rule, in-place distillation) and cuts out its grid (8 widths x 2 depths), choosing a
sub-network for each of three targets. Its counterparts: the converged model's own importance-sorted prefix at widths
0.25, 0.5, 0.75 and 1.0 (full depth), each fine-tuned alone for the same E epochs, and once more with the four runs'
epochs scaled to the sorted run's training time (equal total compute). Accuracy is top-1 on the test split. Writes
the `slice` section of docs/benchmarks.md and docs/slice-pareto.svg; finished work is cached in the work folder, so a
rerun resumes (delete it after code changes).

    python bench/slice.py --data-root ../shared/data/fashion-mnist          # full scale: about 2 hours on 2 cores
                                                                            # (the converged model 23 min, cached; then
                                                                            # about 30 per seed)
    python bench/slice.py --dataset bundled --limit 512 --epochs 1 --reference-epochs 1 --seeds 0 \\
        --work-dir /tmp/slice --out /tmp/slice.md --plot /tmp/slice.svg     # smoke test
"""
from __future__ import annotations

import copy
import os
import re
import statistics
import time
from pathlib import Path

import yaml

from common import (bench_parser, cached_model, command_line, converged_reference, family_member, machine_line, pipeline_data,
                    write_section)
from compress.atomic import atomic_write
from compress.config import DataConfig
from compress.context import RunContext
from compress.data import load_data
from compress.metrics import layer_costs
from compress.methods.slicing.supernet import SubNet, nested, sort_by_importance
from compress.pipeline import run_pipeline, seed_everything, stage_folder
from compress.report_html import Point, pareto_svg, si
from compress.targets import resolve
from compress.targets.cost import estimate_latency_ms
from compress.targets.profiling import calibrate
from compress.training import TrainConfig, Trainer, evaluate

ROUND_TO = 4  # channel multiple: at the targets' alignment of 16 the 8- and 16-channel stages could not narrow
COMPARED = [0.25, 0.5, 0.75, 1.0]
TARGETS = ["host", "raspberry-pi-5", "jetson-orin-nano"]
REPO = Path(__file__).resolve().parents[1]
SMALLEST = {"overall": "the narrowest and shallowest every step",
            "per_depth": "the narrowest of depth 1 and of depth 2 on alternate steps"}


def parse_args(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--widths", type=int, nargs=3, default=[16, 32, 64], help="channels of the resnet_s's three stages "
                   "(two blocks each); at [8, 16, 32] a narrow pass costs about as much as the full one on 2 cores "
                   "(docs/benchmarks.md)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of the sorted run and of each separate run (2 and 4 compared in "
                   "docs/benchmarks.md)")
    p.add_argument("--reference-epochs", type=int, default=20, help="training of the converged model every run starts from")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate of the sorted and the separate fine-tuning")
    p.add_argument("--samples-per-step", type=int, default=1, help="the slice stage's sub-networks sampled per step "
                   "besides the full and the smallest (each adds a forward and backward pass)")
    p.add_argument("--smallest", choices=["per_depth", "overall"], default="per_depth", help="the slice stage's "
                   "sandwich smallest: the narrowest of each depth in turn (per_depth) or the narrowest and shallowest "
                   "every step (overall; both compared in docs/benchmarks.md)")
    p.add_argument("--channels-last", action="store_true", help="train the sorted and the separate runs in NHWC: both run "
                   "faster on this CPU, the full-width fine-tune more (docs/benchmarks.md)")
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench-slice"), help="pipeline runs and separate-training cache")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--plot", type=Path, default=REPO / "docs" / "slice-pareto.svg")
    return p.parse_args(argv)


def architecture(args) -> dict:
    return {"arch": "resnet_s", "kwargs": {"widths": args.widths, "depths": [2, 2, 2]}}


def reference_training(args) -> TrainConfig:
    return TrainConfig(epochs=args.reference_epochs, lr=0.1, warmup_epochs=0.3)


def training(args, epochs: int) -> dict:
    return {"epochs": epochs, "lr": args.lr, **({"channels_last": True} if args.channels_last else {})}


def layout(args) -> str:
    """The cache folders' suffix for the memory layout the runs train in."""
    return "-nhwc" if args.channels_last else ""


def pipeline(args, seed: int, weights: Path) -> dict:
    data = pipeline_data(args)
    return {"name": f"slice-{seed}", "seed": seed, "model": {**architecture(args), "weights": str(weights.resolve())}, "data": data,
            "stages": [{"type": "slice", "depths": [1, 2], "round_to": ROUND_TO, "samples_per_step": args.samples_per_step,
                        "smallest": args.smallest,
                        **training(args, args.epochs)}],
            "export": {"formats": ["onnx"], "latency_runs": 20}, "targets": TARGETS}


def member_name(subnets: dict, name: str) -> str:
    """The grid member `name` is, under its own name or one it is the same sub-network as."""
    return next(n for n, m in subnets.items() if n == name or name in m.get("same_as", []))


def sorted_run(args, seed: int, data, reference: Path) -> dict:
    """Run the pipeline on the converged model in folder `reference` (resumed when done) and score every sub-network
    on the test split."""
    folder = args.work_dir / reference.name / f"sorted-e{args.epochs}-lr{args.lr:g}-k{args.samples_per_step}-{args.smallest}{layout(args)}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pipeline.yaml"
    atomic_write(path, yaml.safe_dump(pipeline(args, seed, reference / "weights.safetensors"), sort_keys=False).encode())
    report = run_pipeline(path, run_dir=folder / "run", quiet=True)
    metrics = report["stages"][0]["metrics"]
    stage = stage_folder(folder / "run", 0, "slice")
    scores = {}
    for name, m in metrics["subnets"].items():
        model, spec, _ = family_member(stage, metrics, name)
        scores[name] = {**m, "test_accuracy": evaluate(model, data.test)["accuracy"], "spec": spec, "model": model}
    return {"subnets": scores, "chosen": metrics["chosen"], "train_seconds": metrics["train_seconds"]}


def separate(args, reference: tuple, width: float, epochs: int, seed: int, data, data_cfg: DataConfig) -> dict:
    """The converged model's importance-sorted prefix at `width` and full depth (the sorted run's sub-network, cut
    before its training), fine-tuned alone for `epochs` (cached); test accuracy and training time."""
    model, spec, folder = reference

    def make():
        seed_everything(seed)
        supernet = nested(copy.deepcopy(model), data.input_shape, "cpu", ROUND_TO, depth=True)
        sort_by_importance(supernet)
        prefix, transforms = supernet.extract(SubNet(width, supernet.max_depth))
        ctx = RunContext(data=data, data_config=data_cfg, seed=seed, quiet=True, stage_name=f"w{width:g}")
        Trainer(prefix, TrainConfig(**training(args, epochs)), ctx).fit()
        return prefix, spec.then(*transforms)

    trained, _, metrics = cached_model(args.work_dir / folder.name / f"alone-w{width:g}-e{epochs}-lr{args.lr:g}{layout(args)}-{seed}", make)
    return {"test_accuracy": evaluate(trained, data.test)["accuracy"], "seconds": metrics["seconds"]}


def spread(values: list[float]) -> str:
    """Mean with the range over seeds, in points."""
    return f"{100 * statistics.mean(values):.2f} ({100 * min(values):.2f}-{100 * max(values):.2f})"


def calibrated_estimate(members: dict, latency: dict[str, float], name: str, host, input_shape) -> float:
    """The host cost model's batch-1 estimate for grid member `name`, with its efficiencies and layer overhead fitted
    (the fit of `compress profile --calibrate`) to the other members' measured latencies (`latency`: name -> ms)."""
    others = {n: layer_costs(m["model"], input_shape) for n, m in members.items() if n != name}
    measured = {"results": [{"precision": "fp32", "file": n, "batches": {"1": {"p50_ms": latency[n]}}} for n in others]}
    return estimate_latency_ms(layer_costs(members[name]["model"], input_shape), "fp32", calibrate(measured, host, others))


def e2e_points() -> list[Point]:
    """The pruned and small dense fp32 rows of the e2e section (MACs, test accuracy), read from docs/benchmarks.md."""
    text = (REPO / "docs" / "benchmarks.md").read_text()
    section = text.split("<!-- bench:e2e:start -->")[-1].split("<!-- bench:e2e:end -->")[0]
    points = []
    for name, macs, budget, accuracy in re.findall(r"^\| (torch-pruning one-shot|small dense from scratch|ours, fp32) \| ([\d.]+)M "
                                                   r"\([^)]*\) \| (\d+) \| ([\d.]+)", section, re.M):
        points.append(Point(f"e2e: {name}, E={budget}", float(macs) * 1e6, float(accuracy) / 100, group="variant"))
    return points


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    data_cfg = DataConfig(dataset=args.dataset, root=args.data_root.resolve() if args.data_root else None,
                          limit=args.limit, batch_size=128)
    data = load_data(data_cfg, args.seeds[0])
    host = resolve("host")
    ref_model, ref_spec, ref_metrics, ref_folder = converged_reference(data, data_cfg, reference_training(args),
                                                                       args.work_dir / "reference", arch=architecture(args))
    reference = (ref_model, ref_spec, ref_folder)
    ref_accuracy = evaluate(ref_model, data.test)["accuracy"]
    runs, alone, equal = [], [], []
    for seed in args.seeds:
        run = sorted_run(args, seed, data, ref_folder)
        names = {w: member_name(run["subnets"], f"w{w:g}-d2") for w in COMPARED}
        alone.append({w: separate(args, reference, w, args.epochs, seed, data, data_cfg) for w in COMPARED})
        scale = run["train_seconds"] / sum(r["seconds"] for r in alone[-1].values())
        epochs = max(1, round(args.epochs * scale))
        equal.append({w: separate(args, reference, w, epochs, seed, data, data_cfg) for w in COMPARED}
                     if epochs != args.epochs else None)
        runs.append({**run, "names": names, "equal_epochs": epochs})

    first = runs[0]["subnets"]
    full = member_name(first, "w1-d2")
    curve = ", ".join(f"{i}: {100 * e['val_accuracy']:.2f}" for i, e in enumerate(ref_metrics["curve"], 1)
                      if i in (1, 5) or i % 5 == 0 or i > len(ref_metrics["curve"]) - 3)
    lines = ["## Sub-network slicing: one sorted run against separate fine-tuning (`bench/slice.py`)", "",
             f"Dataset {args.dataset}{f' (limit {args.limit})' if args.limit else ''}: {len(data.train):,} train / "
             f"{len(data.val):,} val / {len(data.test):,} test; top-1 test accuracy, mean over seeds {args.seeds} with the "
             f"range in brackets. Architecture resnet_s {architecture(args)['kwargs']}. Every run starts from one converged model "
             f"of it: {args.reference_epochs} epochs (SGD, lr 0.1, cosine, warm-up 0.3 epochs, 2-pixel shifts, batch 128; "
             f"{ref_metrics['seconds'] / 60:.0f} minutes, not counted below), test accuracy {ref_accuracy:.2%}, validation "
             f"accuracy by epoch {curve}. The sorted run fine-tunes it for {args.epochs} epochs (SGD, lr {args.lr:g}, cosine, "
             f"no augmentation{', NHWC' if args.channels_last else ''}) as `type: slice`: default 8 widths x depths [1, 2] (16 grid points), "
             f"{args.samples_per_step} sampled sub-network(s) per step besides the full and the smallest (`smallest: "
             f"{args.smallest}`: {SMALLEST[args.smallest]}), in-place "
             f"distillation, BatchNorm recalibrated on 50 batches per sub-network, channel counts multiples of {ROUND_TO} "
             f"(`round_to: {ROUND_TO}`: at the targets' alignment of 16 the 8- and 16-channel stages could not narrow). "
             f"The separate runs fine-tune the converged model's importance-sorted prefix at each width (the same "
             f"sub-network, cut before the sorted training) alone, with the same settings. Targets: {', '.join(TARGETS)}. "
             f"Latency: each grid member's batch-1 ONNX Runtime time here, the members timed together in 5 alternating rounds "
             f"of 20 runs (the median of the rounds' medians), and in the tables the median over the seeds' runs.", "",
             "### The grid", "",
             "| sub-network | MACs | share of full MACs | test acc | of full network | BN gain (val, pts) | ORT b1 here ms |",
             "|---|---|---|---|---|---|---|"]
    full_acc = [r["subnets"][member_name(r["subnets"], "w1-d2")]["test_accuracy"] for r in runs]
    worst_share = 1.0
    for name, m in first.items():
        accs = [r["subnets"][name]["test_accuracy"] for r in runs]
        shares = [a / f for a, f in zip(accs, full_acc)]
        worst_share = min(worst_share, min(shares))
        macs = m["macs_share"] * sum(c.macs for c in layer_costs(first[full]["model"], data.input_shape))
        same = f" (= {', '.join(m['same_as'])})" if m.get("same_as") else ""
        lines.append(f"| {name}{same} | {si(macs)} | {m['macs_share']:.1%} | {spread(accs)} | {100 * statistics.mean(shares):.1f}% | "
                     f"{statistics.mean(100 * r['subnets'][name]['bn_gain'] for r in runs):+.1f} | "
                     f"{statistics.median(r['subnets'][name]['host_latency_ms'] for r in runs):.3f} |")

    lines += ["", "### Against separate fine-tuning", "",
              f"| width (depth 2) | sorted | separate, {args.epochs} epochs | gap (pts) | separate, equal total compute | gap (pts) |",
              "|---|---|---|---|---|---|"]
    gaps = {}
    for w in COMPARED:
        ours = [r["subnets"][r["names"][w]]["test_accuracy"] for r in runs]
        theirs = [a[w]["test_accuracy"] for a in alone]
        gaps[w] = [100 * (o - t) for o, t in zip(ours, theirs)]
        eq = [e[w]["test_accuracy"] for e in equal if e]
        eq_cell = (f"{spread(eq)} | {statistics.mean(100 * (o - t) for o, t in zip(ours, eq)):+.2f}" if eq else
                   "same epochs as the previous column | ")
        lines.append(f"| {w:g} | {spread(ours)} | {spread(theirs)} | {statistics.mean(gaps[w]):+.2f} "
                     f"({min(gaps[w]):+.2f} to {max(gaps[w]):+.2f}) | {eq_cell} |")

    ratios = [r["train_seconds"] / a[1.0]["seconds"] for r, a in zip(runs, alone)]
    separate_total = [sum(x["seconds"] for x in a.values()) for a in alone]
    lines += ["", f"Training time: the sorted run {statistics.median(r['train_seconds'] for r in runs):.0f} s (median over seeds), "
              f"one full-width run {statistics.median(a[1.0]['seconds'] for a in alone):.0f} s, the four separate runs "
              f"{statistics.median(separate_total):.0f} s; sorted / full-width "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x). Equal-compute epochs per separate run: "
              f"{', '.join(str(r['equal_epochs']) for r in runs)}.", ""]

    lines += ["### Chosen per target", "", "| target | chosen (seed " + str(args.seeds[0]) + ") | test acc | ORT b1 here ms | "
              "estimate, nominal host ms | nominal / measured | estimate, calibrated ms | calibrated / measured |",
              "|---|---|---|---|---|---|---|---|"]
    errors = []
    latency = {n: statistics.median(r["subnets"][n]["host_latency_ms"] for r in runs) for n in first}  # one session per run
    for target, name in runs[0]["chosen"].items():
        m, measured = first[name], latency[name]
        nominal = estimate_latency_ms(layer_costs(m["model"], data.input_shape), "fp32", host)
        fitted = calibrated_estimate(first, latency, name, host, data.input_shape)
        errors.append(fitted / measured - 1)
        lines.append(f"| {target} | {name} | {m['test_accuracy']:.2%} | {measured:.3f} | {nominal:.3f} | "
                     f"{nominal / measured:.2f} | {fitted:.3f} | {fitted / measured:.2f} |")
    lines += ["", "Measured: the median over the seeds' runs (each run times its members in its own ONNX Runtime sessions). "
              "Calibrated: the host profile's efficiencies and layer overhead fitted, as `compress profile --calibrate` fits "
              "them, to the other grid members' measured batch-1 latencies (leave one out)."]

    plot = pareto_svg([Point(f"slice {n}", m["macs_share"] * sum(c.macs for c in layer_costs(first[full]["model"], data.input_shape)),
                             statistics.mean(r["subnets"][n]["test_accuracy"] for r in runs), group="main") for n, m in first.items()]
                      + [Point(f"separate w{w:g}", first[runs[0]["names"][w]]["macs_share"] * sum(
                          c.macs for c in layer_costs(first[full]["model"], data.input_shape)),
                               statistics.mean(a[w]["test_accuracy"] for a in alone), group="variant") for w in COMPARED]
                      + e2e_points(), "Test accuracy against MACs", "MACs per image", "num", si)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.plot, plot.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1).encode())

    worst_gap = min(min(g) for g in gaps.values())
    mean_gaps = {w: statistics.mean(g) for w, g in gaps.items()}
    lines += ["", f"![test accuracy against MACs: slices, separate training, e2e rows]({os.path.relpath(args.plot, args.out.parent)})",
              "", "Goals:",
              f"- every grid point keeps at least 96% of the full network's accuracy: worst {100 * worst_share:.1f}% "
              f"(any seed): {'met' if worst_share >= 0.96 else 'missed'}",
              f"- each compared width within 0.5 points of its separately fine-tuned counterpart: mean gaps "
              f"{', '.join(f'{w:g}: {g:+.2f}' for w, g in mean_gaps.items())}, worst single seed {worst_gap:+.2f}: "
              f"{'met' if all(g >= -0.5 for g in mean_gaps.values()) else 'missed'}",
              f"- one sorted run at most 2x one full-width training: {statistics.median(ratios):.2f}x: "
              f"{'met' if statistics.median(ratios) <= 2 else 'missed'}",
              f"- chosen sub-networks' measured latency within 25% of the calibrated estimate: errors "
              f"{', '.join(f'{e:+.0%}' for e in errors)}: {'met' if all(abs(e) <= 0.25 for e in errors) else 'missed'}",
              "", f"Wall time of this invocation {(time.perf_counter() - start) / 60:.1f} minutes (cached work is reused). "
              f"{machine_line(command_line())}"]
    print(write_section(args.out, "slice", "\n".join(lines)))


if __name__ == "__main__":
    main()
