"""Benchmark of `type: prune` on Fashion-MNIST; writes the `prune` section of docs/benchmarks.md.

Channel pruning of the reference model to 4x, 8x and 16x fewer MACs: the gradual (cubic) schedule vs one-shot pruning
then fine-tuning (same stage and epochs) vs a small dense resnet_s of about the same MACs trained from scratch for the
reference's epochs plus the fine-tuning epochs. Unstructured magnitude pruning to 50/75/90% vs small dense models with
about as many non-zero weights. The reference is trained once per seed; it and every finished row are cached in the work
folder, so an interrupted run resumes (delete the work folder after changing the code). Everything runs on the CPU; latency:
ONNX Runtime CPU, the models timed in alternating rounds so that machine noise hits them alike.

    python bench/prune.py --data-root ../shared/data/fashion-mnist                                  # full scale
    python bench/prune.py --data-root ../shared/data/fashion-mnist --limit 1000 --epochs 1 --finetune-epochs 1 \\
        --frequency 2 --seeds 0 1 --runs 5 --rounds 1 --work-dir /tmp/prune-bench --out /tmp/prune.md  # smoke test
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from common import REFERENCE, ROUNDS, bench_parser, command_line, latencies, machine_line, scaled_reference, trained_model, write_section
from compress.atomic import atomic_write, to_json
from compress.config import DataConfig, sha256_json
from compress.context import RunContext
from compress.data import load_data
from compress.errors import ConfigError
from compress.export.onnx import export_onnx
from compress.metrics import model_metrics
from compress.pipeline import seed_everything
from compress.stages.prune import PruneStage
from compress.targets import resolve
from compress.training import TrainConfig, evaluate

def parse_args(argv=None) -> argparse.Namespace:
    p = bench_parser(__doc__)
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the reference model")
    p.add_argument("--finetune-epochs", type=int, default=2, help="epochs of every prune row; small dense rows train epochs + this")
    p.add_argument("--macs", type=float, nargs="+", default=[4, 8, 16], help="channel pruning: MACs reduction factors")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75, 0.9], help="unstructured: final sparsities")
    p.add_argument("--frequency", type=int, default=50, help="training steps between pruning steps (gradual rows)")
    p.add_argument("--target", default="x86-avx2", help="profile giving the channel alignment")
    p.add_argument("--runs", type=int, default=50, help="timed ONNX Runtime runs per measurement")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="alternating timing rounds over all models")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench-prune"), help="model and row cache")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="markdown file whose prune section is replaced")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


class Bench:
    """Runs and caches the rows of one benchmark configuration, pruning `arch` ({arch, kwargs}) trained from scratch."""

    def __init__(self, args, arch: dict = REFERENCE):
        self.args, self.arch = args, arch
        self.data_cfg = DataConfig(dataset=args.dataset, root=args.data_root, limit=args.limit, batch_size=args.batch_size)
        self.data = load_data(self.data_cfg, seed=0)
        if self.data.test is None:
            raise SystemExit(f"dataset {args.dataset} has no test split")
        self.target = resolve(args.target)
        self.reference_train = TrainConfig(epochs=args.epochs, lr=0.1, warmup_epochs=0.3)

    def ctx(self, seed: int, name: str) -> RunContext:
        return RunContext(data=self.data, data_config=self.data_cfg, target=self.target, seed=seed, quiet=self.args.quiet,
                          stage_name=name)

    def reference(self, seed: int) -> tuple[torch.nn.Module, dict]:
        return trained_model(self.arch, self.data, self.data_cfg, self.reference_train, seed, self.args.work_dir / "models", self.args.quiet)

    def cached(self, key: dict, make) -> dict:
        """The record of a finished row, or `make()`'s, stored under a hash of everything it depends on."""
        digest = sha256_json({**key, "data": self.data_cfg.model_dump(mode="json"), "reference": self.reference_train.model_dump(),
                              "target": self.target.name, **({} if self.arch is REFERENCE else {"arch": self.arch})})[:20]
        path = self.args.work_dir / "rows" / f"{digest}.json"
        if path.is_file():
            return json.loads(path.read_text())
        start = time.perf_counter()
        record = make(path.with_suffix(".onnx"))
        record["seconds"] = time.perf_counter() - start
        atomic_write(path, to_json(record))
        return record

    def measure(self, model: torch.nn.Module, onnx_path: Path) -> dict:
        """Accuracy, size and cost of a finished model; writes its ONNX file for the latency rounds."""
        metrics = model_metrics(model, self.data.input_shape)
        export_onnx(model, self.data.input_shape, onnx_path, opset=17, exporter="torchscript")
        return {"test_accuracy": evaluate(model, self.data.test)["accuracy"], "val_accuracy": evaluate(model, self.data.val)["accuracy"],
                "macs": metrics["macs"], "params": metrics["params"], "nonzero_params": metrics["nonzero_params"], "onnx": str(onnx_path)}

    def pruned(self, stage: dict, seed: int) -> dict:
        """Fine-tune a copy of the seed's reference with a prune stage."""
        config = PruneStage.Config.model_validate({"type": "prune", "epochs": self.args.finetune_epochs, **stage})

        def make(onnx_path: Path) -> dict:
            model, spec = self.reference(seed)
            seed_everything(seed)
            try:
                result = PruneStage(config).run(copy.deepcopy(model), spec, self.ctx(seed, "prune"))
            except ConfigError as e:
                return {"error": str(e)}
            keep = ("schedule", "channel_ratio", "macs_ratio")
            return {**self.measure(result.model, onnx_path), **{k: result.metrics[k] for k in keep if k in result.metrics}}

        return self.cached({"prune": config.model_dump(mode="json"), "seed": seed}, make)

    def dense(self, kwargs: dict, seed: int) -> dict:
        """Train a resnet_s of the given widths from scratch for the reference's epochs plus the fine-tuning epochs."""
        train = self.reference_train.model_copy(update={"epochs": self.args.epochs + self.args.finetune_epochs})

        def make(onnx_path: Path) -> dict:
            model, _ = trained_model({"arch": "resnet_s", "kwargs": kwargs}, self.data, self.data_cfg, train, seed,
                                     self.args.work_dir / "models", self.args.quiet)
            return {**self.measure(model, onnx_path), "kwargs": kwargs}

        return self.cached({"dense": kwargs, "seed": seed, "train": train.model_dump()}, make)


def points(values: list[float]) -> str:
    """'mean ± sample std' in percent."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def compare(name: str, a: list[dict], b: list[dict], b_name: str) -> str:
    """One finding line: the test-accuracy gap of `a` over `b` against the sum of their seed spreads."""
    x, y = [r["test_accuracy"] for r in a], [r["test_accuracy"] for r in b]
    gap = statistics.mean(x) - statistics.mean(y)
    spread = sum(statistics.stdev(v) if len(v) > 1 else 0.0 for v in (x, y))
    verdict = "ahead by more than" if gap > spread else "not ahead by more than"
    return f"- {name} vs {b_name}: {100 * gap:+.2f} points, {verdict} the seed spread ({100 * spread:.2f})"


def main(argv=None) -> None:
    args = parse_args(argv)
    bench = Bench(args)
    seeds = args.seeds
    reference = [bench.dense(REFERENCE["kwargs"], s) for s in seeds]  # the reference trained for epochs + fine-tuning epochs
    base = [bench.cached({"reference": True, "seed": s}, lambda p, s=s: bench.measure(bench.reference(s)[0], p)) for s in seeds]
    channel_rows, unstructured_rows = {}, {}
    for factor in args.macs:
        gradual = {"method": "channel", "target_macs": 1 / factor, "schedule": {"frequency": args.frequency}}
        one_shot = {"method": "channel", "target_macs": 1 / factor, "schedule": {"kind": "one_shot"}}
        rows = {"gradual": [bench.pruned(gradual, s) for s in seeds], "one-shot": [bench.pruned(one_shot, s) for s in seeds]}
        goal = rows["gradual"][0].get("macs", base[0]["macs"] / factor)
        rows["small dense"] = [bench.dense(scaled_reference(bench.data, "macs", goal), s) for s in seeds]
        channel_rows[factor] = rows
    for sparsity in args.sparsities:
        stage = {"method": "magnitude", "final_sparsity": sparsity, "schedule": {"frequency": args.frequency}}
        rows = {"gradual magnitude": [bench.pruned(stage, s) for s in seeds]}
        rows["small dense"] = [bench.dense(scaled_reference(bench.data, "params", rows["gradual magnitude"][0]["nonzero_params"]), s) for s in seeds]
        unstructured_rows[sparsity] = rows

    timed = {"reference": base[0]["onnx"]}
    for factor, rows in channel_rows.items():
        timed.update({f"{factor:g}x {name}": runs[0]["onnx"] for name, runs in rows.items() if "onnx" in runs[0]})
    latency = latencies(timed, bench.data, args.runs, args.rounds).medians()
    print(write_section(args.out, "prune", markdown(args, bench, base, reference, channel_rows, unstructured_rows, latency)))


def markdown(args, bench: Bench, base, reference, channel_rows, unstructured_rows, latency) -> str:
    data, ref_lat = bench.data, latency["reference"]
    defaults = PruneStage.Config(type="prune")
    lines = [
        "## Pruning (`type: prune`, `bench/prune.py`)", "",
        f"Dataset {args.dataset}{f' (limit {args.limit})' if args.limit else ''}: {len(data.train):,} train / {len(data.val):,} val / "
        f"{len(data.test):,} test. Reference {REFERENCE['arch']} {REFERENCE['kwargs']} ({base[0]['params']:,} params, "
        f"{base[0]['macs'] / 1e6:.1f}M MACs), trained {args.epochs} epochs (SGD, lr 0.1, cosine). Every prune row fine-tunes it for "
        f"{args.finetune_epochs} epochs (SGD, lr {defaults.lr:g}, cosine); gradual rows prune on the cubic schedule from step 0 to "
        f"{defaults.schedule.end:.0%} of the steps, every {args.frequency} steps; one-shot rows prune at step 0. Small dense rows: resnet_s with widths scaled to the "
        f"same MACs (channel) or non-zero parameters (unstructured), trained from scratch for {args.epochs + args.finetune_epochs} "
        f"epochs like the reference. Channel alignment {bench.target.channel_alignment} (target {bench.target.name}). "
        f"Seeds {', '.join(map(str, args.seeds))}; test accuracy in percent, mean ± sample std over seeds. Latency: ONNX Runtime "
        f"CPU, median of {args.rounds} alternating rounds of {args.runs} runs, seed {args.seeds[0]}'s model.", "",
        "### Channel pruning", "",
        "| MACs | row | MACs (M) | params | test accuracy | per seed | b1 ms | b32 ms | b32 speed-up |", "|---|---|---|---|---|---|---|---|---|",
        f"| 1x | reference, {args.epochs} epochs | {base[0]['macs'] / 1e6:.2f} | {base[0]['params']:,} | "
        f"{points([r['test_accuracy'] for r in base])} | {per_seed(base)} | {ref_lat[1]:.3f} | {ref_lat[32]:.3f} | 1.00x |",
        f"| 1x | reference, {args.epochs + args.finetune_epochs} epochs | {reference[0]['macs'] / 1e6:.2f} | {reference[0]['params']:,} | "
        f"{points([r['test_accuracy'] for r in reference])} | {per_seed(reference)} | | | |",
    ]
    findings = []
    for factor, rows in channel_rows.items():
        for name, runs in rows.items():
            if "error" in runs[0]:
                lines.append(f"| {factor:g}x | {name} | unreachable: {runs[0]['error']} | | | | | | |")
                continue
            lat = latency.get(f"{factor:g}x {name}")
            timing = f"{lat[1]:.3f} | {lat[32]:.3f} | {ref_lat[32] / lat[32]:.2f}x" if lat else " | | "
            lines.append(f"| {factor:g}x | {name} | {runs[0]['macs'] / 1e6:.2f} | {runs[0]['params']:,} | "
                         f"{points([r['test_accuracy'] for r in runs])} | {per_seed(runs)} | {timing} |")
        if "error" not in rows["gradual"][0]:
            findings += [compare(f"{factor:g}x gradual", rows["gradual"], rows[other], other) for other in ("one-shot", "small dense")
                         if "error" not in rows[other][0]]
            findings.append(compare(f"{factor:g}x gradual", rows["gradual"], base, f"unpruned reference ({args.epochs} epochs)"))
            if factor == 8 and f"{factor:g}x gradual" in latency:
                drop = statistics.mean(r["test_accuracy"] for r in base) - statistics.mean(r["test_accuracy"] for r in rows["gradual"])
                speedup = ref_lat[32] / latency[f"{factor:g}x gradual"][32]
                met = "met" if drop <= 0.01 and speedup >= 4 else "not met"
                findings.append(f"- goal at 8x (at most 1 point below the reference, at least 4x faster at batch 32): {met} "
                                f"({100 * drop:.2f} points below, {speedup:.2f}x)")
    lines += ["", "### Unstructured magnitude pruning", "",
              "| sparsity | row | non-zero params | params | test accuracy | per seed |", "|---|---|---|---|---|---|"]
    for sparsity, rows in unstructured_rows.items():
        for name, runs in rows.items():
            lines.append(f"| {sparsity:.0%} | {name} | {runs[0]['nonzero_params']:,} | {runs[0]['params']:,} | "
                         f"{points([r['test_accuracy'] for r in runs])} | {per_seed(runs)} |")
        findings.append(compare(f"{sparsity:.0%} large-sparse", rows["gradual magnitude"], rows["small dense"], "small dense"))
    lines += ["", "Findings ('ahead' means the mean gap exceeds the sum of both rows' standard deviations):", *findings, "",
              machine_line(command_line())]
    return "\n".join(lines)


def per_seed(runs: list[dict]) -> str:
    return ", ".join(f"{100 * r['test_accuracy']:.2f}" for r in runs)


if __name__ == "__main__":
    main()
