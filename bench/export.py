"""Export benchmark: fp32 ONNX parity, INT8 accuracy drop, INT8/fp32 latency on this CPU, cost-model error.

    python bench/export.py --data-root ../shared/data/fashion-mnist      # full Fashion-MNIST, ~10 minutes on 2 cores
    python bench/export.py --dataset bundled --epochs 1 --runs 20 --out /tmp/b.md   # smoke test
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import BATCHES, REFERENCE, THREADS, command_line, latencies, machine_line, trained_model, write_section
from compress.config import DataConfig, ExportConfig
from compress.data import load_data
from compress.export.runner import export_and_validate
from compress.export.validate import ort_session, run_session
from compress.models import build_model, make_spec
from compress.metrics import layer_costs
from compress.targets import resolve
from compress.targets.profiling import calibrate
from compress.targets.cost import estimate_latency_ms
from compress.training import TrainConfig

VARIANTS = [
    ("cnn_s", {"channels": [8, 16, 32]}), ("cnn_s", {"channels": [16, 32, 64]}), ("cnn_s", {"channels": [32, 64, 128]}),
    ("resnet_s", {"widths": [8, 16, 32], "depths": [1, 1, 1]}), ("resnet_s", {"widths": [16, 32, 64]}),
    ("resnet_s", {"widths": [32, 64, 128], "depths": [1, 1, 1]}), ("resnet_s", {"widths": [48, 96, 192], "depths": [1, 1, 1]}),
    ("mobilenet_s", {}), ("mobilenet_s", {"stem": 8, "blocks": [[1, 8, 1, 1], [4, 16, 2, 2], [4, 24, 2, 2]], "head": 64}),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-root", type=Path)
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the reference model")
    p.add_argument("--runs", type=int, default=100, help="timed runs per measurement")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of the side-by-side INT8/fp32 timing")
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench-export"))
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    return p.parse_args(argv)


def cost_model_rows(data, work: Path, runs: int) -> tuple[list[dict], float, float]:
    """Estimated vs measured fp32 latency for each variant: profile defaults and leave-one-out calibration."""
    host = resolve("host")
    rows = []
    for arch, kwargs in VARIANTS:
        spec = make_spec(arch, data.in_channels, data.num_classes, kwargs)
        model = build_model(spec).eval()
        folder = work / "variants" / f"{arch}-{len(rows)}"
        artifacts, _ = export_and_validate(model, spec, data, ExportConfig(formats=["onnx"], latency_runs=runs,
                                           latency_batch_sizes=list(BATCHES)), host, folder)
        layers = layer_costs(model, data.input_shape)
        rows.append({"name": f"{arch} {kwargs}" if kwargs else arch, "macs": sum(l.macs for l in layers),
                     "layers": layers, "file": artifacts[0].path,
                     "measured": {b: artifacts[0].latency_ms[str(b)] for b in BATCHES}})
    for i, row in enumerate(rows):
        others = [r for j, r in enumerate(rows) if j != i]
        fitted = calibrate({"results": [{"file": r["file"], "precision": "fp32",
                                         "batches": {str(b): {"p50_ms": r["measured"][b]} for b in BATCHES}} for r in others]},
                           host, {r["file"]: r["layers"] for r in others})
        row["default"] = {b: estimate_latency_ms(row["layers"], "fp32", host, b) for b in BATCHES}
        row["loo"] = {b: estimate_latency_ms(row["layers"], "fp32", fitted, b) for b in BATCHES}
    error = lambda key: statistics.median(abs(r[key][b] / r["measured"][b] - 1) for r in rows for b in BATCHES)  # noqa: E731
    return rows, error("default"), error("loo")


def main(argv=None) -> None:
    args = parse_args(argv)
    data_cfg = DataConfig(dataset=args.dataset, root=args.data_root, batch_size=128)
    data = load_data(data_cfg, seed=0)
    train = TrainConfig(epochs=args.epochs, lr=0.1, warmup_epochs=0.3)
    model, spec = trained_model(REFERENCE, data, data_cfg, train, seed=0, cache=args.work_dir / "models")
    host = resolve("host")
    artifacts, deploy = export_and_validate(model, spec, data, ExportConfig(formats=["onnx", "onnx-int8"], latency_runs=args.runs,
                                            latency_batch_sizes=list(BATCHES)), host, args.work_dir / "artifacts")
    fp32, int8 = artifacts
    test = {a.precision: float((run_session(ort_session(Path(a.path)), data.test.x, 512).argmax(1) == data.test.y).float().mean())
            for a in artifacts}
    timing = latencies({a.precision: a.path for a in artifacts}, data, args.runs, args.rounds)
    rows, default_error, loo_error = cost_model_rows(data, args.work_dir, args.runs)
    lines = [
        "## Export: ONNX parity, INT8, cost model (`bench/export.py`)", "",
        f"Reference model {REFERENCE['arch']} {REFERENCE['kwargs']} ({sum(p.numel() for p in model.parameters()):,} params), "
        f"trained {args.epochs} epochs on {args.dataset} ({len(data.train):,} train / {len(data.val):,} val / {len(data.test):,} test). "
        "INT8: NNCF post-training quantization, accuracy-controlled (max drop 1 point), calibrated on 300 training images, "
        "for the `host` target (ONNX Runtime CPU). Latency: ONNX Runtime CPU execution provider, median (min-max) over "
        f"{args.rounds} alternating rounds of each round's p50, with {' and '.join(map(str, THREADS))} intra-op threads.", "",
        "| artifact | size | max abs logit diff vs torch | top-1 agreement | val acc | test acc | "
        + " | ".join(f"b{b} ms, {t} thr" for b in BATCHES for t in THREADS) + " |",
        "|---|---|---|---|---|---|" + "---|" * (len(BATCHES) * len(THREADS)),
    ]
    for a in artifacts:
        lines.append(f"| {a.precision} ONNX | {a.size_bytes / 1e3:.0f} kB | {a.parity['max_abs_diff']:.2e} | "
                     f"{a.parity['top1_agreement']:.2%} | {a.accuracy:.2%} | {test[a.precision]:.2%} | "
                     + " | ".join(timing.cell(a.precision, b, t) for b in BATCHES for t in THREADS) + " |")
    lines += [
        "", f"- fp32 parity: max abs logit difference {fp32.parity['max_abs_diff']:.1e} (goal at most 1e-4).",
        f"- INT8 accuracy drop: {100 * (test['fp32'] - test['int8']):.2f} points on test, "
        f"{100 * int8.accuracy_drop:.2f} on val (goal at most 0.5).",
        f"- INT8 speed-up over fp32, timed side by side in {args.rounds} alternating rounds (median, range over rounds): "
        + "; ".join(f"{t} thread(s): " + ", ".join(f"{timing.speedup_cell('fp32', 'int8', b, t)} at batch {b}" for b in BATCHES)
                    for t in THREADS) + ".",
        f"- Deployable for `host`: {deploy['format'] if deploy else 'none'}.", "",
        "Cost model (per-layer roofline, `targets/cost.py`) against measured fp32 latency on this machine; "
        "'calibrated' fits compute efficiency, memory efficiency and per-layer overhead on the other variants (leave one out):", "",
        "| variant | MACs | measured b1 / b32 (ms) | estimated, profile defaults | estimated, calibrated |", "|---|---|---|---|---|",
    ]
    for r in rows:
        fmt = lambda d: f"{d[1]:.3f} / {d[32]:.3f}"  # noqa: E731
        lines.append(f"| {r['name']} | {r['macs'] / 1e6:.1f}M | {fmt(r['measured'])} | {fmt(r['default'])} | {fmt(r['loo'])} |")
    lines += ["", f"Median absolute error over {len(rows)} variants x {len(BATCHES)} batch sizes: "
              f"{100 * default_error:.0f}% with the profile's defaults, {100 * loo_error:.0f}% calibrated (goal under 25%).",
              "", machine_line(command_line())]
    print(write_section(args.out, "export", "\n".join(lines)))


if __name__ == "__main__":
    main()
