"""NN-Factory benchmark: assembly by the generator against the SortedNet prefix rule and an evolutionary search.

Per seed, one pipeline: `type: slice` trains a resnet_s supernet (2 epochs from scratch, depths 1-2, channels in
multiples of 4), then `type: factory` trains its generator with the supernet frozen and assembles every scenario:
MACs budgets, latency budgets on two targets (the cost model's, as fractions of the full supernet's latency there),
a size budget and class subsets. The stage measures, on the validation split, the assembled model, the prefix rule
(one width everywhere, the largest that fits) and an evolutionary search (16 x 8, each candidate scored on 1,000
training examples after BatchNorm recalibration, the same cost model and repair). Writes the `factory` section of
docs/benchmarks.md; finished runs are cached in the work folder (delete it after code changes).

    python bench/factory.py --data-root ../shared/data/fashion-mnist          # full scale
    python bench/factory.py --dataset bundled --limit 512 --seeds 0 --work-dir /tmp/factory --out /tmp/factory.md
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import yaml

from common import bench_parser, command_line, machine_line, pipeline_data, write_section
from compress.atomic import atomic_write
from compress.methods.assembly.modules import ModularSupernet
from compress.methods.budget import target_costs
from compress.methods.slicing.supernet import nested
from compress.models import build_model, make_spec
from compress.pipeline import run_pipeline
from compress.targets import resolve

ARCH = {"arch": "resnet_s", "kwargs": {"widths": [8, 16, 32], "depths": [2, 2, 2]}}
TARGETS = ["jetson-orin-nano", "raspberry-pi-5"]
SHAPE = (1, 28, 28)
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--epochs", type=int, default=2, help="epochs of the sorted (slice) run")
    p.add_argument("--generator-epochs", type=float, default=2.0)
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench-factory"))
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    return p.parse_args(argv)


def latency_range(target: str) -> tuple[float, float]:
    """The cost-model latency of the smallest and of the full sub-network of the supernet on `target`."""
    model = build_model(make_spec(ARCH["arch"], 1, 10, ARCH["kwargs"]))
    net = ModularSupernet(nested(model, SHAPE, torch.device("cpu"), 4, depth=True), 4, SHAPE)
    smallest = net.extract(net.smallest)[0]
    return tuple(target_costs(m, resolve(target), SHAPE)["latency_ms"] for m in (smallest, model))


def scenarios() -> list[dict]:
    """Eleven scenarios: MACs, latency on two targets (at shares of the way from the smallest sub-network's latency
    there to the full supernet's), size, class subsets."""
    model = build_model(make_spec(ARCH["arch"], 1, 10, ARCH["kwargs"]))
    full = {t: target_costs(model, resolve(t), SHAPE) for t in TARGETS}
    ranges = {t: latency_range(t) for t in TARGETS}
    latency = lambda t, share: round(ranges[t][0] + share * (ranges[t][1] - ranges[t][0]), 4)  # noqa: E731
    return [{"macs": 0.25}, {"macs": 0.4}, {"macs": 0.6},
            {"latency_ms": latency(TARGETS[0], 0.4), "target": TARGETS[0]},
            {"latency_ms": latency(TARGETS[0], 0.6), "target": TARGETS[0]},
            {"latency_ms": latency(TARGETS[1], 0.3), "target": TARGETS[1]},
            {"latency_ms": latency(TARGETS[1], 0.5), "target": TARGETS[1]},
            {"size_kb": round(full[TARGETS[0]]["size_mb"] * 1e3 * 0.4, 1), "target": TARGETS[0]},
            {"macs": 0.3, "classes": [0, 2, 5]},
            {"macs": 0.5, "classes": [1, 3, 7, 9]},
            {"latency_ms": latency(TARGETS[1], 0.4), "target": TARGETS[1], "classes": [0, 6]}]


def pipeline(args, seed: int) -> dict:
    data = pipeline_data(args)
    return {"name": f"factory-{seed}", "seed": seed, "model": ARCH, "data": data,
            # `smallest: overall`: the sandwich the committed table was trained with (per_depth, the default since, is untried here)
            "stages": [{"type": "slice", "depths": [1, 2], "round_to": 4, "smallest": "overall", "epochs": args.epochs, "lr": 0.1,
                        "warmup_epochs": 0.3},
                       {"type": "factory", "module_channels": 4, "generator": {"epochs": args.generator_epochs},
                        "search": {"population": args.population, "generations": args.generations, "samples": 1000},
                        "scenarios": scenarios()}],
            "export": {"formats": ["onnx"], "latency_runs": 5}, "targets": TARGETS}


def run(args, seed: int) -> dict:
    folder = args.work_dir / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "pipeline.yaml", yaml.safe_dump(pipeline(args, seed), sort_keys=False).encode())
    started = time.perf_counter()
    report = run_pipeline(folder / "pipeline.yaml", run_dir=folder / "run", quiet=True)
    stage = report["stages"][1]
    return {"seconds": time.perf_counter() - started, "metrics": stage["metrics"], "stage_seconds": stage["metrics"]["seconds"]}


def spread(values: list[float], scale: float = 100, digits: int = 2) -> str:
    return f"{scale * statistics.mean(values):.{digits}f} ({scale * min(values):.{digits}f}-{scale * max(values):.{digits}f})"


def main(argv=None) -> None:
    args = parse_args(argv)
    runs = [run(args, seed) for seed in args.seeds]
    names = list(runs[0]["metrics"]["scenarios"])
    lines = ["## NN-Factory assembly against the prefix rule and evolutionary search (`bench/factory.py`)", "",
             f"Dataset {args.dataset}{f' (limit {args.limit})' if args.limit else ''}; seeds {args.seeds}. Supernet: "
             f"{ARCH['arch']} {ARCH['kwargs']} trained by `type: slice` for {args.epochs} epochs from scratch (depths 1-2, "
             f"round_to 4). Factory: 4-channel modules, generator {args.generator_epochs:g} epochs (one scenario per batch "
             f"of 512; the switch between the width-first and depth-first orders trained, the paths as they start; of its "
             f"checkpoints every tenth of the steps, and the untrained one, the one that scores best on 16 probe scenarios "
             f"is kept), BatchNorm recalibrated on 10 batches of the scenario's classes. Search: population "
             f"{args.population}, {args.generations} generations, fitness = accuracy on 1,000 training examples after "
             f"recalibration; the same cost model and greedy repair. Accuracy: validation split, of the scenario's classes; "
             f"mean over seeds (range). Times: wall seconds on this machine, median over seeds.", "",
             "| scenario | cost / budget (ours) | ours | order (per seed) | prefix rule | search | ours - search | assembly s | "
             "search s | speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    gaps_search, gaps_prefix, speedups, worst_assembly, violations = [], [], [], 0.0, 0
    for name in names:
        rows = [r["metrics"]["scenarios"][name] for r in runs]
        ours, prefix, search = ([m["accuracy"] for m in rows], [m["prefix"]["accuracy"] for m in rows],
                                [m["search"]["accuracy"] for m in rows])
        assembly = [m["assembly_seconds"] for m in rows]
        search_s = [m["search"]["seconds"] for m in rows]
        violations += sum(cost > m["budget"]["value"] for m in rows for cost in (m["cost"], m["prefix"]["cost"], m["search"]["cost"]))
        gap = [o - s for o, s in zip(ours, search)]
        gaps_search += gap
        gaps_prefix += [o - p for o, p in zip(ours, prefix)]
        speedups += [s / a for s, a in zip(search_s, assembly)]
        worst_assembly = max(worst_assembly, max(assembly))
        use = statistics.mean(m["cost"] / m["budget"]["value"] for m in rows)
        orders = ", ".join(m["order"].split()[0] for m in rows)
        lines.append(f"| {name} | {use:.0%} | {spread(ours)} | {orders} | {spread(prefix)} | {spread(search)} | "
                     f"{100 * statistics.mean(gap):+.2f} | {statistics.median(assembly):.3f} | "
                     f"{statistics.median(search_s):.1f} | {statistics.median(s / a for s, a in zip(search_s, assembly)):.0f}x |")
    per_seed = [statistics.mean(m["accuracy"] - m["prefix"]["accuracy"] for m in r["metrics"]["scenarios"].values())
                for r in runs]
    beyond = min(per_seed) > 0 and (len(per_seed) < 2 or statistics.mean(per_seed) > statistics.stdev(per_seed))
    stage_s = [r["metrics"]["seconds"] for r in runs]
    generator_s = [r["metrics"]["generator"]["train_seconds"] for r in runs]
    lines += ["", f"Summary over {len(names)} scenarios x {len(runs)} seeds: ours - search {100 * statistics.mean(gaps_search):+.2f} "
              f"points on average (per scenario and seed {100 * min(gaps_search):+.2f} to {100 * max(gaps_search):+.2f}); "
              f"ours - prefix rule {100 * statistics.mean(gaps_prefix):+.2f} ({100 * min(gaps_prefix):+.2f} to "
              f"{100 * max(gaps_prefix):+.2f}), per seed {', '.join(f'{100 * g:+.2f}' for g in per_seed)}: "
              f"{'ahead in every seed, the mean above the standard deviation over seeds' if beyond else 'not beyond the seed spread'}"
              f"{f' ({100 * statistics.stdev(per_seed):.2f})' if len(per_seed) > 1 else ''}; assembly at most {worst_assembly:.2f} s per scenario (generate, repair, "
              f"BatchNorm; after a one-time load); search / assembly {statistics.median(speedups):.0f}x median "
              f"({min(speedups):.0f}-{max(speedups):.0f}x); budget violations {violations} (ours, prefix and search). "
              f"Kept generator checkpoints (step of {runs[0]['metrics']['generator']['steps']}, per seed): "
              f"{', '.join(str(r['metrics']['generator']['kept_step']) for r in runs)}. "
              f"Generator training took {statistics.median(generator_s):.0f} s per seed, the whole factory stage (with "
              f"the scenarios and both baselines) {statistics.median(stage_s):.0f} s (medians).", "",
              machine_line(command_line())]
    print(write_section(args.out, "factory", "\n".join(lines)))


if __name__ == "__main__":
    main()
