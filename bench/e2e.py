"""Headline benchmark: compress a converged model with every method on the same budget, 3 seeds, side by side.

The reference (a 308k-parameter resnet_s) is trained to convergence once, with augmentation, and cached: it is the
pretrained model every row starts from, and its training time is reported, not counted. Every row that trains gets
the same compression budget of E epochs, at each budget and each compression level (MACs reduction factor):

- ours: a pipeline file `compress` runs (gradual channel pruning plus the costliest block, distilling from the
  reference it prunes, for all E epochs, then INT8 export; `--ours prune+meal`: pruning on the labels, then MEAL
  distillation from the reference, the epochs split between the two stages), its fp32 model and its deployable file;
- ours, sliced: a second pipeline file, the reference trained as a nested supernet (`type: slice`) for E epochs; per
  level, the grid member most accurate on validation within its MACs, and every member of the first seed's run as a
  curve on the plot;
- NNCF INT8 alone; torch-pruning one-shot + fine-tuning; torch-pruning's own iterative MagnitudePruner; NVIDIA Model
  Optimizer's FastNAS + fine-tuning (where it installs); a small dense model from scratch for E epochs and for the
  reference's whole training budget; each pruned or small model also as INT8.

Every ONNX file is scored on the test split by ONNX Runtime and timed in alternating rounds; verdicts count a gap
only beyond the seed spread; the roofline uses peaks measured by a GEMM microbenchmark on this machine. Writes the
`e2e` section of docs/benchmarks.md and docs/e2e-pareto.svg. Finished work is cached in the work folder: a rerun
resumes (delete it after code changes).

    python bench/e2e.py --data-root ../shared/data/fashion-mnist           # full scale (see docs/benchmarks.md)
    python bench/e2e.py --dataset bundled --limit 600 --reference-epochs 1 --levels 8 --budgets 2 --seeds 0 --runs 3 \\
        --rounds 1 --work-dir /tmp/e2e --out /tmp/e2e.md --plot /tmp/e2e.svg      # smoke test
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml

import peers
from common import (REFERENCE, ROUNDS, THREADS, Timings, bench_parser, cached_model, command_line, converged_reference, family_member,
                    gemm_peaks, latencies, machine_line, scaled_reference, train_from_scratch, write_section)
from compress.atomic import atomic_write, to_json
from compress.checkpoint import WEIGHTS, load_model_dir
from compress.config import DataConfig, ExportConfig, sha256_json
from compress.data import load_data
from compress.export.runner import export_and_validate
from compress.export.validate import ort_session, run_session
from compress.methods.slicing.family import preference
from compress.metrics import layer_costs, model_metrics
from compress.pipeline import run_pipeline, stage_folder
from compress.report_html import Point, ms, pareto_svg
from compress.targets import fingerprint, resolve
from compress.targets.cost import peak_terms_ms
from compress.training import TrainConfig

FORMATS = ["onnx", "onnx-int8"]  # fp32 and INT8 ONNX for every model
REPO = Path(__file__).resolve().parents[1]
METHODS = ["ours", "one-shot", "iterative", "fastnas", "small", "small-full", "slice"]
# the slicing pipeline's width grid, dense where the levels fall: on the reference (channels multiples of 8) w0.2 keeps
# 5.7% of the MACs (within 1/16) and w0.35 10.6% (within 1/8)
SLICE_WIDTHS = [0.2, 0.25, 0.3, 0.35, 0.5, 0.625, 0.75, 0.875, 1.0]
SLICE_SAMPLES = 1  # sub-networks sampled per step besides the full and the smallest, as in bench/slice.py
OURS = {"prune+meal": "gradual channel pruning, then MEAL distillation from the reference, the epochs split between them",
        "prune-distill": "gradual channel pruning distilled from the model it prunes (the reference), for all the epochs"}
SAME_LATENCY = 0.05  # latencies within 5% count as equal: one architecture timed twice differs by that much here


def parse_args(argv=None) -> argparse.Namespace:
    p = bench_parser(__doc__)
    p.add_argument("--reference-epochs", type=int, default=30, help="training epochs of the converged reference")
    p.add_argument("--budgets", type=int, nargs="+", default=[3, 8], help="compression budgets: epochs every training row gets")
    p.add_argument("--levels", type=float, nargs="+", default=[8, 16], help="MACs reduction factors")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS, help="the rows to run (the reference and NNCF "
                                                                                     "INT8 always run)")
    p.add_argument("--ours", choices=list(OURS), default="prune-distill", help="our pipeline: " +
                   "; ".join(f"{name}: {what}" for name, what in OURS.items()))
    p.add_argument("--no-fill-budget", action="store_true", help="our prune stage with fill_budget: false (channel counts from "
                   "the uniform ratio alone, as before 2026-12-08)")
    p.add_argument("--drop-blocks", type=int, default=1, help="blocks our prune stage removes besides channels (0: none)")
    p.add_argument("--target", default="x86-avx512-vnni", help="export target (INT8 settings, channel alignment)")
    p.add_argument("--runs", type=int, default=50, help="timed ONNX Runtime runs per measurement")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="alternating timing rounds over all files")
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench-e2e"), help="cache of every trained model and file")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="markdown file whose e2e section is replaced")
    p.add_argument("--plot", type=Path, default=Path("docs/e2e-pareto.svg"), help="the accuracy-latency plot")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if min(args.budgets) < 1 or min(args.levels) <= 1:
        p.error("budgets are epochs (at least 1) and levels are MACs reduction factors (above 1)")
    return args


@dataclasses.dataclass
class Run:
    """One seed of a row: its ONNX file, the torch model it came from and what it cost to make (seconds)."""

    seed: int
    model: torch.nn.Module
    onnx: str
    seconds: Optional[float]
    measured: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Row:
    """One line of the table: a method at one compression level and budget, over its seeds."""

    name: str
    group: str  # reference | peer | ours
    level: Optional[float]
    budget: Optional[int]
    precision: str
    runs: list[Run]
    note: str = ""

    @property
    def key(self) -> str:
        if self.level:
            return f"{self.name} (1/{self.level:g}, E={self.budget})"
        return f"{self.name} (E={self.budget})" if self.budget else self.name

    def values(self, what: str) -> list[float]:
        return [r.measured[what] for r in self.runs]

    def mean(self, what: str) -> float:
        return statistics.mean(self.values(what))

    def std(self, what: str) -> float:
        values = self.values(what)
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def median(self, what: str) -> float:
        return statistics.median(self.values(what))


def data_config(args) -> DataConfig:
    return DataConfig(dataset=args.dataset, root=args.data_root.resolve() if args.data_root else None, limit=args.limit)


def reference_training(args) -> TrainConfig:
    return TrainConfig(epochs=args.reference_epochs, lr=0.1, warmup_epochs=0.3, channels_last=True)


def exported(model, spec, data, target, folder: Path) -> tuple[dict[str, str], float]:
    """fp32 and INT8 ONNX files of a model ({precision: path}) and the export's wall time, cached in `folder` per target."""
    folder = folder / fingerprint(target)[:12]
    done = folder / "exported.json"
    if done.is_file():
        record = json.loads(done.read_text())
        return record["paths"], record["seconds"]
    start = time.perf_counter()
    artifacts, _ = export_and_validate(model, spec, data, ExportConfig(formats=FORMATS, latency_runs=5), target, folder)
    record = {"paths": {a.precision: a.path for a in artifacts if a.status != "failed"}, "seconds": time.perf_counter() - start}
    atomic_write(done, to_json(record))
    return record["paths"], record["seconds"]


def split_budget(args, budget: int) -> tuple[int, int]:
    """(prune epochs, MEAL epochs) of our pipeline within a budget of `budget` epochs."""
    if args.ours == "prune-distill":
        return budget, 0
    prune = math.ceil(budget / 2)
    return prune, budget - prune


def pipeline_file(args, level: float, budget: int, seed: int, reference_weights: Path, path: Path) -> dict:
    """Our pipeline for one level, budget and seed, written as the YAML file `compress` runs: it starts from the
    converged reference's weights and distils from them."""
    prune_epochs, meal_epochs = split_budget(args, budget)
    stages = [{"type": "prune", "name": "prune", "method": "channel", "target_macs": round(1 / level, 6), "round_to": peers.ROUND_TO,
               **({"drop_blocks": args.drop_blocks} if args.drop_blocks else {}), **({"fill_budget": False} if args.no_fill_budget else {}),
               "epochs": prune_epochs, **peers.FINE_TUNING,
               **({"distill": {}} if args.ours == "prune-distill" else {})}]
    if meal_epochs:
        stages.append({"type": "meal", "name": "meal", "teachers": [{**REFERENCE, "weights": str(reference_weights)}],
                       "hard_label_weight": 0.5, "discriminator": {"enabled": False}, "epochs": meal_epochs, "lr": 0.02,
                       "channels_last": True})
    return write_pipeline(args, "e2e", seed, stages, FORMATS, reference_weights, path)


def slice_pipeline_file(args, budget: int, seed: int, reference_weights: Path, path: Path) -> dict:
    """Our slicing pipeline for one budget and seed: the reference trained as a nested supernet for E epochs and cut
    into the SLICE_WIDTHS grid, every level's model taken from the same run."""
    stages = [{"type": "slice", "name": "slice", "widths": SLICE_WIDTHS, "round_to": peers.ROUND_TO,
               "samples_per_step": SLICE_SAMPLES, "epochs": budget, **peers.FINE_TUNING}]
    return write_pipeline(args, "e2e-slice", seed, stages, ["onnx"], reference_weights, path)


def write_pipeline(args, name: str, seed: int, stages: list[dict], formats: list[str], reference_weights: Path, path: Path) -> dict:
    """A pipeline file at `path` that runs `stages` on the converged reference's weights; returns its content."""
    config = {"name": name, "seed": seed, "model": {**REFERENCE, "weights": str(reference_weights)},
              "data": data_config(args).model_dump(mode="json", exclude_defaults=True), "stages": stages,
              "export": {"formats": formats, "latency_runs": 5}, "target": args.target}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, yaml.safe_dump(config, sort_keys=False).encode())
    return config


def chosen_member(subnets: dict[str, dict], share: float) -> str:
    """The slice stage's rule within `share` of the full network's MACs: the grid member most accurate on the validation
    split (fewer MACs on a tie)."""
    fitting = {name: m for name, m in subnets.items() if m["macs_share"] <= share}
    if not fitting:
        raise SystemExit(f"no slicing grid member within {share:.1%} of the MACs; add a narrower width to SLICE_WIDTHS")
    return max(fitting, key=lambda name: preference(fitting[name]))


class Bench:
    """Trains (or reuses) every row's models and exports them; `rows()` returns the table's rows."""

    def __init__(self, args, data):
        self.args, self.data, self.target = args, data, resolve(args.target)
        self.data_cfg = data_config(args)
        self.reference, self.spec, self.reference_metrics, self.reference_folder = converged_reference(
            data, self.data_cfg, reference_training(args), args.work_dir / "reference", args.quiet)
        self.key = self.reference_folder.name  # every cached row depends on the reference
        self.pipelines: dict[tuple, dict] = {}  # (level, budget, seed) -> our pipeline's report
        self.families: dict[int, list[tuple]] = {}  # budget -> per seed (seed, stage folder, stage metrics, work folder)
        self.slice_pipeline: Optional[dict] = None  # the first slicing pipeline file, as the docs quote it

    def cached(self, name: str, level: float, budget: int, seed: int, settings: dict,
               make: Callable[[], tuple]) -> tuple[torch.nn.Module, dict, dict, Path]:
        folder = self.args.work_dir / "rows" / f"{name}-{level:g}x-E{budget}-s{seed}-{sha256_json([self.key, settings])[:10]}"
        model, spec, metrics = cached_model(folder / "model", make)
        return model, spec, metrics, folder

    def trained_rows(self, label: str, note: str, level: float, budget: int, make: Callable[[int], tuple], settings: dict) -> list[Row]:
        """A row for the fp32 model and one for its INT8 file, over the seeds."""
        fp32, int8 = [], []
        for seed in self.args.seeds:
            model, spec, metrics, folder = self.cached(label, level, budget, seed, settings, lambda: make(seed))
            paths, export_seconds = exported(model, spec, self.data, self.target, folder)
            seconds = metrics["seconds"] + metrics.get("search_seconds", 0.0)
            fp32.append(Run(seed, model, paths["fp32"], seconds))
            int8.append(Run(seed, model, paths["int8"], seconds + export_seconds))
        return [Row(label, "peer", level, budget, "fp32", fp32, note), Row(f"{label} + INT8", "peer", level, budget, "int8", int8)]

    def fastnas(self, level: float) -> tuple[torch.nn.Module, dict, dict]:
        """FastNAS's searched sub-network for one level (cached), before fine-tuning, and the search's metrics."""
        folder = self.args.work_dir / "fastnas" / f"{level:g}x-{sha256_json([self.key, peers.ROUND_TO, peers.FASTNAS_SCORE_EXAMPLES])[:10]}"
        return cached_model(folder / "model", lambda: peers.fastnas_search(self.reference, self.spec, self.data, self.data_cfg, round(1 / level, 6),
                                                                         folder, self.args.quiet))

    def ours(self, level: float, budget: int) -> list[Row]:
        fp32, deploy = [], []
        for seed in self.args.seeds:
            variant = ("" if self.args.ours == "prune+meal" else f"-{self.args.ours}") + ("-nofill" if self.args.no_fill_budget else "")
            # (prune+meal keeps the folders it was cached in)
            folder = self.args.work_dir / "ours" / f"{level:g}x-E{budget}-s{seed}-{self.key[-8:]}{variant}"
            config = pipeline_file(self.args, level, budget, seed, (self.reference_folder / WEIGHTS).resolve(), folder / "e2e.yaml")
            report = run_pipeline(folder / "e2e.yaml", run_dir=folder / "run", quiet=self.args.quiet)
            self.pipelines[level, budget, seed] = {"report": report, "config": config}
            last = report["stages"][-1]
            model, _, _ = load_model_dir(stage_folder(folder / "run", last["index"], last["type"]))
            artifacts = {a["precision"]: a["path"] for a in report["artifacts"]}
            stage_seconds = sum(s["metrics"]["seconds"] for s in report["stages"])  # recorded when each stage ran
            export_seconds = report["seconds"] - sum(s["metrics"]["seconds"] for s in report["stages"] if s["status"] == "ran")
            fp32.append(Run(seed, model, artifacts["fp32"], stage_seconds))
            deploy.append(Run(seed, model, report["deploy"]["path"], stage_seconds + export_seconds))
        prune_epochs, meal_epochs = split_budget(self.args, budget)
        note = (f"prune {prune_epochs} + MEAL {meal_epochs} epochs" if meal_epochs else
                f"prune {prune_epochs} epochs{', distilled' if self.args.ours == 'prune-distill' else ''}")
        precision = report["deploy"]["precision"]
        return [Row("ours, fp32", "ours", level, budget, "fp32", fp32, note),
                Row(f"ours: deployable {precision}", "ours", level, budget, precision, deploy, "the pipeline's deploy choice")]

    def sliced(self, budget: int) -> list[tuple[int, Path, dict, Path]]:
        """Our slicing pipeline at one budget, per seed (resumed when done): (seed, its slice stage's folder, the stage's
        metrics, a work folder beside the run)."""
        if budget not in self.families:
            self.families[budget] = []
            for seed in self.args.seeds:
                folder = self.args.work_dir / "sliced" / f"E{budget}-s{seed}-{self.key[-8:]}"
                config = slice_pipeline_file(self.args, budget, seed, (self.reference_folder / WEIGHTS).resolve(), folder / "e2e-slice.yaml")
                self.slice_pipeline = self.slice_pipeline or config
                report = run_pipeline(folder / "e2e-slice.yaml", run_dir=folder / "run", quiet=self.args.quiet)
                stage = report["stages"][0]
                self.families[budget].append((seed, stage_folder(folder / "run", stage["index"], stage["type"]), stage["metrics"], folder))
        return self.families[budget]

    def member_run(self, seed: int, stage: Path, metrics: dict, folder: Path, name: str) -> tuple[Run, Run]:
        """One grid member of a slicing run as fp32 and INT8 runs (exported beside the run, cached); the time is the
        slice stage's (training, recalibration, measurement) plus, for INT8, the export."""
        model, spec, _ = family_member(stage, metrics, name)
        paths, export_seconds = exported(model, spec, self.data, self.target, folder / "members" / name)
        return (Run(seed, model, paths["fp32"], metrics["seconds"]), Run(seed, model, paths["int8"], metrics["seconds"] + export_seconds))

    def slice_rows(self, level: float, budget: int) -> list[Row]:
        """Our slicing pipeline's model at one level: per seed, the member its rule picks within 1/level of the MACs."""
        families = self.sliced(budget)
        names = [chosen_member(metrics["subnets"], round(1 / level, 6)) for _, _, metrics, _ in families]
        runs = [self.member_run(*family, name) for family, name in zip(families, names)]
        note = f"slice {budget} epochs, chosen within 1/{level:g} of the MACs: {', '.join(dict.fromkeys(names))}"
        return [Row("ours, sliced", "ours", level, budget, "fp32", [fp32 for fp32, _ in runs], note),
                Row("ours, sliced + INT8", "ours", level, budget, "int8", [int8 for _, int8 in runs])]

    def slice_curve(self, budget: int) -> list[Row]:
        """Every grid member of the first seed's slicing run, as INT8: the curve of one run's sub-networks."""
        seed, stage, metrics, folder = self.sliced(budget)[0]
        return [Row(f"slice {name}", "curve", None, budget, "int8", [self.member_run(seed, stage, metrics, folder, name)[1]])
                for name in metrics["subnets"]]

    def rows(self) -> tuple[list[Row], dict[str, str]]:
        """Every row, and the methods that could not run ({method: why})."""
        args, data, cfg = self.args, self.data, self.data_cfg
        files, export_seconds = exported(self.reference, self.spec, data, self.target, self.args.work_dir / "reference-export")
        rows = [Row("fp32 reference", "reference", None, None, "fp32", [Run(0, self.reference, files["fp32"], None)],
                    f"trained {args.reference_epochs} epochs with augmentation"),
                Row("NNCF INT8 alone", "peer", None, None, "int8", [Run(0, self.reference, files["int8"], export_seconds)],
                    "post-training quantization")]
        skipped = {}
        if "fastnas" in args.methods and (why := peers.fastnas_available()):
            skipped["fastnas"] = why
        for level in args.levels:
            macs = round(1 / level, 6)
            small = {"arch": REFERENCE["arch"], "kwargs": scaled_reference(data, "macs", macs * model_metrics(self.reference, data.input_shape)["macs"])}
            for budget in args.budgets:
                if "ours" in args.methods:
                    rows += self.ours(level, budget)
                if "slice" in args.methods:
                    rows += self.slice_rows(level, budget)
                if "one-shot" in args.methods:
                    rows += self.trained_rows("torch-pruning one-shot", f"{budget} fine-tuning epochs", level, budget, lambda seed: peers.one_shot(
                        self.reference, self.spec, data, cfg, macs, budget, seed, self.target, args.quiet), {"macs": macs, **peers.FINE_TUNING})
                if "iterative" in args.methods:
                    rows += self.trained_rows("torch-pruning iterative", f"MagnitudePruner, {peers.ITERATIVE_STEPS} steps in {budget} epochs",
                                              level, budget, lambda seed: peers.iterative(self.reference, self.spec, data, cfg, macs, budget, seed, args.quiet),
                                              {"macs": macs, "steps": peers.ITERATIVE_STEPS, **peers.FINE_TUNING})
                if "fastnas" in args.methods and "fastnas" not in skipped:
                    searched, searched_spec, search = self.fastnas(level)
                    rows += self.trained_rows("Model Optimizer FastNAS", f"search once per level ({search['seconds']:.0f} s, in the time), "
                                              f"{budget} fine-tuning epochs", level, budget, lambda seed: (*peers.fine_tuned(
                                                  searched, searched_spec, data, cfg, budget, seed, "fastnas", args.quiet), {"search_seconds": search["seconds"]}),
                                              {"macs": macs, **peers.FINE_TUNING})
                if "small" in args.methods:
                    train = TrainConfig(epochs=budget, lr=0.1, warmup_epochs=0.3, channels_last=True)
                    rows += self.trained_rows("small dense from scratch", f"widths {small['kwargs']['widths']}, {budget} epochs", level, budget,
                                              lambda seed: train_from_scratch(small, data, cfg, train, seed, args.quiet), {"small": small, **train.model_dump()})
            if "small-full" in args.methods:
                train, augmented = reference_training(args), cfg.model_copy(update={"augment": True})
                rows += self.trained_rows("small dense, the reference's budget", f"widths {small['kwargs']['widths']}, {train.epochs} epochs, "
                                          "augmentation", level, train.epochs, lambda seed: train_from_scratch(small, data, augmented, train, seed, args.quiet),
                                          {"small": small, "augmented": True, **train.model_dump()})
        if "slice" in args.methods:
            rows += [row for budget in args.budgets for row in self.slice_curve(budget)]
        return rows, skipped


def measure(rows: list[Row], data, args, peaks: dict[str, float]) -> Timings:
    """Test accuracy (ONNX Runtime), size, cost, latency and roofline share (at the measured peaks) of every run."""
    host = resolve("host")
    measured_host = host.model_copy(update={"peak_tops": {**host.peak_tops, **peaks}})
    files = {f"{row.key} s{run.seed}": run.onnx for row in rows for run in row.runs}
    timing = latencies(files, data, args.runs, args.rounds)
    for row in rows:
        for run in row.runs:
            name = f"{row.key} s{run.seed}"
            logits = run_session(ort_session(Path(run.onnx)), data.test.x, 512)
            metrics = model_metrics(run.model, data.input_shape)
            compute, memory = peak_terms_ms(layer_costs(run.model, data.input_shape), row.precision, measured_host, batch=32)
            run.measured = {"accuracy": 100 * float((logits.argmax(1) == data.test.y).float().mean()), "params": metrics["params"],
                            "macs": metrics["macs"], "size": Path(run.onnx).stat().st_size, "b1": timing.median(name, 1),
                            "b32": timing.median(name, 32), "roofline": max(compute, memory) / timing.median(name, 32)}
    return timing


def speedups(timing: Timings, reference: Row, row: Row, batch: int, threads: int = THREADS[-1]) -> dict[str, float]:
    """The reference's time over the row's, per round and seed: median, min and max."""
    ratios = [s / f for run in row.runs
              for s, f in zip(timing.rounds[f"{reference.key} s0"][threads][batch], timing.rounds[f"{row.key} s{run.seed}"][threads][batch])]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def ratio_cell(r: dict[str, float]) -> str:
    return f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def accuracy_cell(row: Row) -> str:
    return f"{row.mean('accuracy'):.2f} ± {row.std('accuracy'):.2f}" if len(row.runs) > 1 else f"{row.mean('accuracy'):.2f}"


def gap_and_spread(ours: Row, peer: Row) -> tuple[float, float]:
    """Our mean accuracy minus the peer's, and the seed spread it must exceed (the sum of both standard deviations)."""
    return ours.mean("accuracy") - peer.mean("accuracy"), ours.std("accuracy") + peer.std("accuracy")


def ahead(ours: Row, peer: Row) -> dict[str, bool]:
    """Per batch size, whether our artifact is ahead of a peer on the accuracy-latency plane: higher mean accuracy beyond
    the seed spread at equal or lower latency."""
    gap, spread = gap_and_spread(ours, peer)
    return {batch: gap > spread and peer.median(batch) / ours.median(batch) >= 1 - SAME_LATENCY for batch in ("b1", "b32")}


def verdict(ours: Row, peer: Row) -> str:
    """Our gap to a peer, and at each batch size whether ours is ahead of it or it is ahead of ours."""
    gap, spread = gap_and_spread(ours, peer)
    behind = [batch for batch, is_ahead in ahead(peer, ours).items() if is_ahead]
    return f"{gap:+.2f} points (spread {spread:.2f}); " + "; ".join(
        f"{batch} {'ahead' if is_ahead else 'not ahead'} ({peer.median(batch) / ours.median(batch):.2f}x its speed)"
        for batch, is_ahead in ahead(ours, peer).items()) + (f"; it is ahead of ours at {' and '.join(behind)}" if behind else "")


def goals(rows: list[Row], timing: Timings) -> tuple[list[str], dict[str, bool]]:
    """Lines on our deployable artifact per level and budget against the issue's goals, and whether each goal held."""
    reference = rows[0]
    lines, held = [], {"b32": True, "b1": True, "accuracy": True, "ahead": True}
    for ours in (r for r in rows if r.group == "ours" and r.name.startswith(("ours: deployable", "ours, sliced + INT8"))):
        counted = ours.name.startswith("ours: deployable")  # the goals are the pipeline's deploy choice's; the slicing variant is shown
        b32, b1 = (speedups(timing, reference, ours, b) for b in (32, 1))
        fast, small = b32["median"], b1["median"]
        one_thread = speedups(timing, reference, ours, 32, THREADS[0])
        drop = reference.mean("accuracy") - ours.mean("accuracy")
        competitors = [r for r in rows if r.group == "peer" and (r.level is None or (r.level == ours.level and (r.budget == ours.budget
                                                                                                                  or "reference's budget" in r.name)))]
        beaten = [r for r in competitors if all(ahead(ours, r).values())]
        beating = [r.key for r in competitors if any(ahead(r, ours).values())]
        if counted:
            held["b32"] &= fast >= 12
            held["b1"] &= small >= 3
            held["accuracy"] &= drop <= 1.0
            held["ahead"] &= len(beaten) == len(competitors)
        lines += [f"- **1/{ours.level:g} of the MACs, E = {ours.budget}** ({ours.name}, {accuracy_cell(ours)}%"
                  f"{'' if counted else '; not counted in the summary'}):",
                  f"  - batch 32: {ratio_cell(b32)} faster than the fp32 reference at {THREADS[-1]} threads ({ratio_cell(one_thread)} at "
                  f"{THREADS[0]}) (goal at least 12x): {'met' if fast >= 12 else f'missed by {12 - fast:.2f}x'}",
                  f"  - batch 1: {ratio_cell(b1)} (goal at least 3x): {'met' if small >= 3 else f'missed by {3 - small:.2f}x'}",
                  f"  - accuracy: {-drop:+.2f} points against the reference (goal: at most 1.0 below): {'met' if drop <= 1 else 'missed'}",
                  f"  - ahead of {len(beaten)} of {len(competitors)} peers at both batch sizes:"]
        lines += [f"    - vs {r.key}: {verdict(ours, r)}" for r in competitors]
        lines.append(f"  - peers ahead of ours (the same test the other way): {', '.join(beating) or 'none'}")
    return lines, held


def markdown(args, rows: list[Row], skipped: dict[str, str], timing: Timings, bench: Bench, peaks: dict, data, wall: float) -> str:
    reference = rows[0]
    curve = bench.reference_metrics["curve"]
    shown_epochs = sorted({1, *range(5, len(curve) + 1, 5), len(curve)})
    lines = [
        "## End to end: a converged model compressed by every method on the same budget (`bench/e2e.py`)", "",
        f"Dataset {args.dataset}{f' (limit {args.limit})' if args.limit else ''}: {len(data.train):,} train / {len(data.val):,} val "
        f"/ {len(data.test):,} test; accuracy is top-1 on test in percent, computed by ONNX Runtime on each file, mean ± "
        f"sample standard deviation over seeds {', '.join(map(str, args.seeds))}. The reference {REFERENCE['arch']} "
        f"{REFERENCE['kwargs']} was trained once ({args.reference_epochs} epochs, SGD lr 0.1, cosine, 2-pixel shifts; "
        f"{bench.reference_metrics['seconds'] / 60:.0f} minutes, not counted below) and every row starts from it. "
        f"Budgets: every training row gets E epochs (fine-tuning lr 0.05, no augmentation, NHWC layout). Latency: ONNX Runtime CPU at "
        f"{THREADS[-1]} intra-op threads, each round's p50 of {args.runs} runs, median over {args.rounds} alternating "
        f"rounds and the seeds' files; speed-ups are the median (min-max) of per-round ratios against the reference. "
        f"Roofline: the batch-32 time at this machine's measured GEMM peak (fp32 {peaks['fp32']:.3f} TOPS, int8 "
        f"{peaks['int8']:.3f} TOPS, ONNX Runtime MatMul / MatMulInteger, {THREADS[-1]} threads) over the measured time. "
        f"Time: median wall seconds per seed of the compression (training and export).", "",
        "Reference validation accuracy by epoch: " + ", ".join(f"{e}: {100 * curve[e - 1]['val_accuracy']:.2f}" for e in shown_epochs) + ".", "",
        "| row | MACs | E | test acc | per seed | Δ pts | params | b1 ms | b32 ms | speed-up b1 | speed-up b32 | time | roofline b32 | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in (r for r in rows if r.group != "curve"):
        share = row.median("macs") / reference.median("macs")
        seconds = "" if row.runs[0].seconds is None else f"{statistics.median(r.seconds for r in row.runs):.0f} s"
        lines.append(f"| {row.name} | {row.median('macs') / 1e6:.2f}M ({share:.1%}) | {row.budget or ''} | {accuracy_cell(row)} | {', '.join(f'{v:.2f}' for v in row.values('accuracy'))} | "
                     f"{row.mean('accuracy') - reference.mean('accuracy'):+.2f} | {int(row.median('params')):,} | {row.median('b1'):.3f} | "
                     f"{row.median('b32'):.3f} | {ratio_cell(speedups(timing, reference, row, 1))} | {ratio_cell(speedups(timing, reference, row, 32))} | "
                     f"{seconds} | {statistics.median(row.values('roofline')):.1%} | {row.note} |")
    for method, why in skipped.items():
        lines.append(f"| {method}: not run | | | | | | | | | | | | | {why} |")
    members = [row for row in rows if row.group == "curve"]
    if members:
        lines += ["", f"The slicing pipeline's sub-networks (seed {members[0].runs[0].seed}, INT8; the curve on the plot), each budget's "
                  f"grid cut from one run:", "", "| sub-network | E | MACs | test acc | b1 ms | b32 ms | speed-up b1 | speed-up b32 |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {row.name} | {row.budget} | {row.median('macs') / 1e6:.2f}M ({row.median('macs') / reference.median('macs'):.1%}) | "
                  f"{row.mean('accuracy'):.2f} | {row.median('b1'):.3f} | {row.median('b32'):.3f} | {ratio_cell(speedups(timing, reference, row, 1))} | "
                  f"{ratio_cell(speedups(timing, reference, row, 32))} |" for row in members]
    goal_lines, held = goals(rows, timing)
    plot_link = os.path.relpath(args.plot, args.out.parent)
    lines += ["", f"![accuracy against batch-32 latency]({plot_link})", "", "Goals for our deployable artifact ('ahead': higher mean "
              f"accuracy beyond the seed spread at equal or lower latency, latencies within {SAME_LATENCY:.0%} counting as equal):", *goal_lines,
              "", "Summary: " + "; ".join(f"{goal} {'met' if ok else 'missed'}" for goal, ok in held.items()) + "."]
    first = next(iter(bench.pipelines.values()), None)
    if first:
        lines += ["", "Our pipeline as `compress` ran it (the first level, budget and seed; the others differ in `seed`, "
                      "`target_macs` and the epochs):", "", "```yaml", yaml.safe_dump(relative_paths(first["config"]), sort_keys=False).rstrip(), "```"]
    if bench.slice_pipeline:
        lines += ["", "Our slicing pipeline (the first budget and seed; the others differ in `seed` and the epochs):", "", "```yaml",
                  yaml.safe_dump(relative_paths(bench.slice_pipeline), sort_keys=False).rstrip(), "```"]
    lines += ["", f"Wall time of this invocation {wall / 60:.1f} minutes (work cached by an earlier one is reused). {machine_line(command_line())}"]
    return "\n".join(lines)


def relative_paths(value):
    """The pipeline as the docs quote it: every absolute path made relative to the repository."""
    if isinstance(value, dict):
        return {k: relative_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.relpath(value, REPO)
    return value


def plot(rows: list[Row]) -> str:
    points = [Point(label=row.key, x=row.median("b32"), y=row.mean("accuracy") / 100, group="main" if row.group == "ours" else "variant")
              for row in rows]
    chart = pareto_svg(points, "Test accuracy against ONNX Runtime latency at batch 32", "p50 latency at batch 32 (ms)", "num", ms)
    return chart.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)  # a file of its own needs the namespace


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    data = load_data(data_config(args), 0)
    bench = Bench(args, data)
    rows, skipped = bench.rows()
    peaks = gemm_peaks(THREADS[-1])
    timing = measure(rows, data, args, peaks)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.plot, plot(rows).encode())
    print(write_section(args.out, "e2e", markdown(args, rows, skipped, timing, bench, peaks, data, time.perf_counter() - start)))


if __name__ == "__main__":
    main()
