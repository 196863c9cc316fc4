"""Headline benchmark: the whole pipeline against each peer on Fashion-MNIST, side by side in one run.

Ours is a real pipeline file (written to the work folder and quoted in docs/benchmarks.md): train the reference, prune
it gradually to 1/8 of its MACs (channels, and the residual block costliest on the target), distil with MEAL from the
unpruned model plus trained teachers, export INT8 with NNCF. The peers start from the same trained reference (the
small dense model from scratch) with the same epochs: NNCF INT8 alone; torch-pruning one-shot to the same MACs,
fine-tuned for our prune + MEAL epochs; a dense resnet_s of the same MACs trained for all our epochs; each pruned or
small peer also with INT8. Every ONNX file is scored on the test split by ONNX Runtime and timed in alternating
rounds. Writes the `e2e` section of docs/benchmarks.md and the Pareto plot docs/e2e-pareto.svg. Finished work is
cached in the work folder: a rerun resumes (delete it after code changes).

    python bench/e2e.py --data-root ../shared/data/fashion-mnist      # full scale: about 30 minutes on 2 cores
    python bench/e2e.py --dataset bundled --epochs 1 --prune-epochs 1 --meal-epochs 1 --teacher-epochs 1 --runs 5 \\
        --rounds 1 --work-dir /tmp/e2e --out /tmp/e2e.md --plot /tmp/e2e.svg      # smoke test
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Optional

import torch
import yaml

from common import (REFERENCE, ROUNDS, THREADS, Timings, bench_parser, cached_model, command_line, latencies, machine_line,
                    scaled_reference, train_from_scratch, write_section)
from compress.atomic import atomic_write, to_json
from compress.checkpoint import load_model_dir
from compress.config import DataConfig, ExportConfig, sha256_json
from compress.context import RunContext
from compress.data import load_data
from compress.export.runner import export_and_validate
from compress.export.validate import ort_session, run_session
from compress.metrics import layer_costs, model_metrics
from compress.pipeline import run_pipeline, seed_everything, stage_folder
from compress.report_html import Point, ms, pareto_svg
from compress.stages.prune import PruneStage
from compress.targets import fingerprint, resolve
from compress.targets.cost import peak_terms_ms
from compress.training import TrainConfig

FORMATS = ["onnx", "onnx-int8"]  # fp32 and INT8 ONNX for every model
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = bench_parser(__doc__)
    p.set_defaults(seeds=[0])
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the reference (the baseline)")
    p.add_argument("--macs", type=float, default=8, help="MACs reduction factor of the channel pruning")
    p.add_argument("--drop-blocks", type=int, default=1, help="blocks our prune stage removes besides channels (0: none)")
    p.add_argument("--prune-epochs", type=int, default=3, help="epochs of our prune stage")
    p.add_argument("--meal-epochs", type=int, default=3, help="epochs of our MEAL stage")
    p.add_argument("--teachers", type=int, default=1, help="teachers MEAL trains besides the unpruned model")
    p.add_argument("--teacher-epochs", type=int, default=6, help="training epochs of each extra teacher")
    p.add_argument("--target", default="x86-avx512-vnni", help="export target (INT8 settings, channel alignment)")
    p.add_argument("--runs", type=int, default=50, help="timed ONNX Runtime runs per measurement")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="alternating timing rounds over all files")
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench-e2e"), help="pipeline run and peer cache")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="markdown file whose e2e section is replaced")
    p.add_argument("--plot", type=Path, default=Path("docs/e2e-pareto.svg"), help="the accuracy-latency plot")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if len(args.seeds) != 1:
        p.error("the e2e benchmark runs one seed")
    return args


@dataclasses.dataclass
class Row:
    """One line of the table: an ONNX file, the torch model it came from, and what it cost to make."""

    name: str
    group: str  # baseline | peer | ours
    model: torch.nn.Module
    onnx: str
    precision: str
    seconds: Optional[float]  # wall time of the compression (training from scratch for the small dense model)
    note: str = ""
    measured: dict = dataclasses.field(default_factory=dict)


def pipeline_file(args, path: Path) -> dict:
    """Our pipeline, written as the YAML file `compress` runs."""
    unpruned = copy.deepcopy(REFERENCE)
    teachers = [{"stage": "train"}]
    if args.teachers:
        teachers.append({"train": {"count": args.teachers, **copy.deepcopy(REFERENCE), "epochs": args.teacher_epochs, "lr": 0.1,
                                   "warmup_epochs": 0.3}})
    config = {
        "name": "e2e", "seed": args.seeds[0], "model": unpruned, "data": data_config(args).model_dump(mode="json", exclude_defaults=True),
        "stages": [
            {"type": "train", "name": "train", **reference_training(args).model_dump(exclude_defaults=True)},
            {"type": "prune", "name": "prune", **prune_settings(args), **({"drop_blocks": args.drop_blocks} if args.drop_blocks else {}),
             "epochs": args.prune_epochs},
            {"type": "meal", "name": "meal", "teachers": teachers, "hard_label_weight": 0.5, "discriminator": {"enabled": False},
             "epochs": args.meal_epochs, "lr": 0.02},
        ],
        "export": {"formats": FORMATS, "latency_runs": 5},
        "target": args.target,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, yaml.safe_dump(config, sort_keys=False).encode())
    return config


def data_config(args) -> DataConfig:
    return DataConfig(dataset=args.dataset, root=args.data_root.resolve() if args.data_root else None, limit=args.limit)


def reference_training(args) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, lr=0.1, warmup_epochs=0.3)


def prune_settings(args) -> dict:
    """What our prune stage and the one-shot peer share: method, MACs goal, alignment."""
    return {"method": "channel", "target_macs": round(1 / args.macs, 6), "round_to": 8}


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


def build_rows(args, data) -> tuple[list[Row], dict, dict]:
    """Run our pipeline and every peer (or reuse the cached results); returns the rows, the run's report and pipeline."""
    work, seed = args.work_dir, args.seeds[0]
    config = pipeline_file(args, work / "e2e.yaml")
    run_dir = work / "pipeline"
    report = run_pipeline(work / "e2e.yaml", run_dir=run_dir, quiet=args.quiet)
    finetune = args.prune_epochs + args.meal_epochs
    # the peers depend on the reference, the pruning goal and the fine-tuning budget, not on how ours prunes or distils
    peers = work / "peers" / sha256_json([config["data"], config["seed"], config["stages"][0], prune_settings(args), finetune])[:12]
    stages = {s["label"]: s for s in report["stages"]}
    folders = {label: stage_folder(run_dir, s["index"], s["type"]) for label, s in stages.items()}
    target = resolve(args.target)
    reference, ref_spec, _ = load_model_dir(folders["train"])
    pruned, pruned_spec, _ = load_model_dir(folders["prune"])
    final, _, _ = load_model_dir(folders["meal"])
    artifacts = {a["precision"]: a["path"] for a in report["artifacts"]}
    deploy = report["deploy"]
    # a teacher trained by an earlier invocation is reused by MEAL: its training still counts as compression time
    reused = sum(t["train_seconds"] or 0 for t in stages["meal"]["metrics"]["teachers"] if t.get("reused"))
    ours_seconds = stages["prune"]["metrics"]["seconds"] + stages["meal"]["metrics"]["seconds"] + reused
    export_seconds = report["seconds"] - sum(s["metrics"]["seconds"] for s in report["stages"] if s["status"] == "ran")

    base_files, base_export = exported(reference, ref_spec, data, target, peers / "baseline")

    def one_shot():
        seed_everything(seed)
        config = PruneStage.Config.model_validate({"type": "prune", **prune_settings(args), "schedule": {"kind": "one_shot"},
                                                   "epochs": finetune})
        ctx = RunContext(data=data, data_config=data_config(args), target=target, seed=seed, quiet=args.quiet, stage_name="one-shot")
        result = PruneStage(config).run(copy.deepcopy(reference), ref_spec, ctx)
        return result.model, result.spec

    shot, shot_spec, shot_metrics = cached_model(peers / "one-shot" / "model", one_shot)
    shot_files, shot_export = exported(shot, shot_spec, data, target, peers / "one-shot")
    small_kwargs = scaled_reference(data, "macs", model_metrics(final, data.input_shape)["macs"])
    small_train = reference_training(args).model_copy(update={"epochs": args.epochs + finetune})
    small_folder = peers / f"small-dense-{'-'.join(map(str, small_kwargs['widths']))}"
    small, small_spec, small_metrics = cached_model(small_folder / "model", lambda: train_from_scratch(
        {"arch": REFERENCE["arch"], "kwargs": small_kwargs}, data, data_config(args), small_train, seed, args.quiet))
    small_seconds = small_metrics["seconds"]
    small_files, small_export = exported(small, small_spec, data, target, small_folder)

    rows = [
        Row("fp32 baseline", "baseline", reference, base_files["fp32"], "fp32", None, f"trained {args.epochs} epochs"),
        Row("NNCF INT8 alone", "peer", reference, base_files["int8"], "int8", base_export, "post-training quantization"),
        Row("torch-pruning one-shot", "peer", shot, shot_files["fp32"], "fp32", shot_metrics["seconds"],
            f"{finetune} fine-tuning epochs"),
        Row("torch-pruning one-shot + INT8", "peer", shot, shot_files["int8"], "int8", shot_metrics["seconds"] + shot_export),
        Row("small dense from scratch", "peer", small, small_files["fp32"], "fp32", small_seconds,
            f"widths {small_kwargs['widths']}, {args.epochs + finetune} epochs"),
        Row("small dense + INT8", "peer", small, small_files["int8"], "int8", small_seconds + small_export),
        Row("ours: after gradual pruning", "ours", pruned, exported(pruned, pruned_spec, data, target, work / "ours-pruned" / stages["prune"]["hash"][:12])[0]["fp32"],
            "fp32", stages["prune"]["metrics"]["seconds"], f"{args.prune_epochs} epochs"),
        Row("ours: after MEAL", "ours", final, artifacts["fp32"], "fp32", ours_seconds, f"{args.meal_epochs} epochs"),
        Row(f"ours: deployable {deploy['precision']}", "ours", final, deploy["path"], deploy["precision"], ours_seconds + export_seconds,
            "the pipeline's deploy choice"),
    ]
    return rows, report, config


def measure(rows: list[Row], data, args) -> Timings:
    """Test accuracy (ONNX Runtime), size, cost, latency (all cores) and roofline share of every row; the timings of
    every round and thread count."""
    host = resolve("host")
    timing = latencies({r.name: r.onnx for r in rows}, data, args.runs, args.rounds)
    for r in rows:
        logits = run_session(ort_session(Path(r.onnx)), data.test.x, 512)
        metrics = model_metrics(r.model, data.input_shape)
        compute, memory = peak_terms_ms(layer_costs(r.model, data.input_shape), r.precision, host, batch=32)
        r.measured = {"accuracy": float((logits.argmax(1) == data.test.y).float().mean()), "params": metrics["params"],
                      "macs": metrics["macs"], "size": Path(r.onnx).stat().st_size, "b1": timing.median(r.name, 1),
                      "b32": timing.median(r.name, 32), "roofline": max(compute, memory) / timing.median(r.name, 32)}
    return timing


def markdown(args, rows: list[Row], timing: Timings, report: dict, config: dict, data, wall: float) -> str:
    base, final = rows[0].measured, rows[-1].measured
    host = resolve("host")
    lines = [
        "## End to end: the pipeline against each peer (`bench/e2e.py`)", "",
        f"Dataset {args.dataset}{f' (limit {args.limit})' if args.limit else ''}: {len(data.train):,} train / {len(data.val):,} val "
        f"/ {len(data.test):,} test; accuracy is top-1 on test, computed by ONNX Runtime on each file. One run, seed "
        f"{args.seeds[0]}. Reference {REFERENCE['arch']} {REFERENCE['kwargs']} trained {args.epochs} epochs. Latency: ONNX Runtime "
        f"CPU, each round's p50 of {args.runs} runs, median (min-max) over {args.rounds} alternating rounds over all files and "
        f"both thread settings ({' and '.join(map(str, THREADS))} intra-op threads); speed-ups are the median (min-max) of "
        f"the per-round ratios; 'ahead' verdicts, roofline and plot use the {THREADS[-1]}-thread medians. Roofline: the b32 time at "
        f"this CPU's nominal peak ({host.description}; fp32 {host.peak_tops['fp32']} TOPS, int8 {host.peak_tops['int8']} TOPS, "
        f"{host.memory_bandwidth_gbps:g} GB/s) over the measured time. Time: wall time of the compression itself (prune and "
        f"MEAL stages, their teachers included, and export; for the small dense model its training).", "",
        "| row | test acc | Δ pts | params | MACs | file | " + " | ".join(f"b{b} ms, {t} thr" for b in (1, 32) for t in THREADS)
        + " | " + " | ".join(f"speed-up b{b}, {t} thr" for b in (1, 32) for t in THREADS) + " | time | roofline b32 | note |",
        "|---|---|---|---|---|---|" + "---|" * (4 * len(THREADS)) + "---|---|---|",
    ]
    for r in rows:
        m = r.measured
        seconds = "" if r.seconds is None else f"{r.seconds:.0f} s"
        lines.append(f"| {r.name} | {m['accuracy']:.2%} | {100 * (m['accuracy'] - base['accuracy']):+.2f} | {m['params']:,} | "
                     f"{m['macs'] / 1e6:.2f}M | {m['size'] / 1e3:.0f} kB | "
                     + " | ".join(timing.cell(r.name, b, t) for b in (1, 32) for t in THREADS) + " | "
                     + " | ".join(timing.speedup_cell(rows[0].name, r.name, b, t) for b in (1, 32) for t in THREADS)
                     + f" | {seconds} | {m['roofline']:.1%} | {r.note} |")
    drop = 100 * (base["accuracy"] - final["accuracy"])
    ratio = {b: timing.speedup(rows[0].name, rows[-1].name, b) for b in (1, 32)}
    b1, b32 = ratio[1]["median"], ratio[32]["median"]
    spread = lambda b: "; ".join(f"{t} thread(s) {timing.speedup_cell(rows[0].name, rows[-1].name, b, t)}" for t in THREADS)  # noqa: E731
    plot_link = os.path.relpath(args.plot, args.out.parent)
    lines += ["", f"![accuracy against batch-32 latency]({plot_link})", "", "Goals for our deployable artifact:",
              f"- batch 32: {b32:.2f}x faster than the fp32 baseline at {THREADS[-1]} threads, median of the rounds "
              f"({spread(32)}) (goal 12x, at least 8x): "
              f"{'met' if b32 >= 12 else 'at least 8x met' if b32 >= 8 else f'missed by {8 - b32:.2f}x'}",
              f"- batch 1: {b1:.2f}x ({spread(1)}) (goal at least 3x): {'met' if b1 >= 3 else f'missed by {3 - b1:.2f}x'}",
              f"- accuracy: {-drop:+.2f} points against the baseline (goal: at most 1.0 below): {'met' if drop <= 1 else 'missed'}",
              f"- against each peer ('ahead': higher test accuracy at equal or lower latency, latencies within "
              f"{SAME_LATENCY:.0%} counting as equal; one seed, so gaps of a few tenths of a point are within noise):"]
    for r in rows[1:-1]:
        if r.group != "peer":
            continue
        lines.append(f"  - vs {r.name}: {verdict(rows[-1].measured, r.measured)}")
    runtime = report["deploy"].get("runtime") or {}
    lines += ["", f"Runtime setting the pipeline recorded for its deployable file on {report['deploy']['target']}: "
                  f"{(runtime.get('setting') or {}).get('label', 'the runtime defaults')} ({runtime.get('source', 'not recorded')}: "
                  f"{runtime.get('reason', '')})."]
    stages = ", ".join(f"{s['label']} {s['metrics']['seconds']:.0f} s" for s in report["stages"])
    lines += ["", f"Our pipeline as `compress` ran it (stage times: {stages}; a MEAL teacher trained by an earlier invocation "
              f"is reused, and its training time is added to the table's time column):", "",
              "```yaml",
              yaml.safe_dump(relative_paths(config), sort_keys=False).rstrip(), "```", "",
              f"Wall time of this invocation {wall / 60:.1f} minutes (work cached by an earlier one is reused). "
              f"{machine_line(command_line())}"]
    return "\n".join(lines)


def relative_paths(config: dict) -> dict:
    """The pipeline as the docs quote it: the data folder relative to the repository, not this machine's path."""
    root = config.get("data", {}).get("root")
    if not root:
        return config
    path = Path(root)
    shown = os.path.relpath(path, REPO) if path.is_absolute() else root
    return {**config, "data": {**config["data"], "root": shown}}


SAME_LATENCY = 0.05  # latencies within 5% count as equal: one architecture timed twice differs by that much here


def verdict(ours: dict, peer: dict) -> str:
    """Where our artifact stands against a peer on the accuracy-latency plane, at both batch sizes: ahead means higher
    accuracy at equal or lower latency."""
    gap = 100 * (ours["accuracy"] - peer["accuracy"])
    parts = []
    for batch in ("b1", "b32"):
        faster = peer[batch] / ours[batch]
        ahead = gap > 0 and faster >= 1 - SAME_LATENCY
        parts.append(f"{batch} {'ahead' if ahead else 'not ahead'} ({gap:+.2f} points, {faster:.2f}x its speed)")
    return "; ".join(parts)


def plot(rows: list[Row]) -> str:
    points = [Point(label=r.name, x=r.measured["b32"], y=r.measured["accuracy"], group="main" if r.group == "ours" else "variant")
              for r in rows]
    chart = pareto_svg(points, "Test accuracy against ONNX Runtime latency at batch 32", "p50 latency at batch 32 (ms)", "num", ms)
    return chart.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)  # a file of its own needs the namespace


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    data = load_data(data_config(args), args.seeds[0])
    rows, report, config = build_rows(args, data)
    timing = measure(rows, data, args)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.plot, plot(rows).encode())
    print(write_section(args.out, "e2e", markdown(args, rows, timing, report, config, data, time.perf_counter() - start)))


if __name__ == "__main__":
    main()
