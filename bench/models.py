"""Benchmark of channel pruning on three Hugging Face vision families (ResNet, MobileNetV2, ConvNeXt); writes the
`models` section of docs/benchmarks.md.

Each family is a small `transformers` config for 1x28x28 inputs, written as config.json to the work folder and loaded
with `arch: hf:CONFIG.json` (random initial weights: nothing is downloaded). Per seed it is trained from scratch on
Fashion-MNIST, then channel-pruned with the prune stage at the target's channel alignment to a quarter of its MACs and
to the lowest MACs the dependency graph allows (every channel group cut by 99%, rounded up to the alignment), each row
fine-tuned for the same epochs. Accuracy is top-1 on the test split over the seeds. Finished work is cached in the work
folder, so a rerun resumes (delete it after code changes).

    python bench/models.py --data-root ../shared/data/fashion-mnist                  # full scale
    python bench/models.py --dataset bundled --limit 600 --epochs 1 --finetune-epochs 1 --seeds 0 \\
        --work-dir /tmp/models-bench --out /tmp/models.md                           # smoke test
"""
from __future__ import annotations

import json
from pathlib import Path

from common import bench_parser, command_line, machine_line, write_section
from compress.atomic import atomic_write
from compress.methods.budget import MAX_RATIO
from compress.models import optional_import
from prune import Bench, per_seed, points

# Small members of each family for 28x28 grey images (HF defaults are ImageNet-sized), and what their from-scratch
# training changes in the reference recipe (SGD, lr 0.1, cosine): MobileNetV2 diverged to NaN at lr 0.1 in one of three
# seeds and its default classifier dropout of 0.8 held it at 76.5% after 2 epochs; ConvNeXt gets the same settings.
FAMILIES = {
    "ResNet": ("resnet", {"embedding_size": 32, "hidden_sizes": [32, 64, 128], "depths": [1, 1, 1], "layer_type": "basic",
                          "downsample_in_first_stage": False}, {}),
    "MobileNetV2": ("mobilenet_v2", {"image_size": 28, "depth_multiplier": 0.5, "classifier_dropout_prob": 0.2},
                    {"lr": 0.05, "grad_clip": 2.0}),
    "ConvNeXt": ("convnext", {"patch_size": 2, "hidden_sizes": [32, 64, 128], "depths": [1, 1, 1], "num_stages": 3},
                 {"lr": 0.05, "grad_clip": 2.0}),
}
QUARTER = 0.25


def parse_args(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--epochs", type=int, default=2, help="training epochs of each family from scratch")
    p.add_argument("--finetune-epochs", type=int, default=1, help="epochs of every prune row")
    p.add_argument("--frequency", type=int, default=50, help="training steps between pruning steps")
    p.add_argument("--target", default="jetson-orin-nano", help="profile giving the channel alignment")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench-models"), help="config, model and row cache")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="markdown file whose models section is replaced")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def write_config(model_type: str, kwargs: dict, folder: Path) -> Path:
    """A config.json for `model_type` with `kwargs` and Fashion-MNIST's shape, as `transformers` writes it."""
    transformers = optional_import("transformers", "hf")
    config = transformers.AutoConfig.for_model(model_type, num_channels=1, num_labels=10, **kwargs)
    path = folder / f"{model_type}.json"
    atomic_write(path, json.dumps(config.to_dict(), indent=2, sort_keys=True).encode())
    return path


def family_rows(args, model_type: str, kwargs: dict, train: dict) -> tuple[Bench, dict]:
    """Unpruned, quarter-MACs and floor rows of one family, one record per seed each; `train` overrides the recipe."""
    path = write_config(model_type, kwargs, args.work_dir / "configs")
    bench = Bench(args, {"arch": f"hf:{path.resolve()}", "kwargs": {}})
    bench.reference_train = bench.reference_train.model_copy(update=train)
    stage = {"method": "channel", "schedule": {"frequency": args.frequency}, "grad_clip": train.get("grad_clip")}
    rows = {
        f"unpruned, {args.epochs} epochs": [bench.cached({"reference": True, "seed": s}, lambda p, s=s: bench.measure(bench.reference(s)[0], p))
                                            for s in args.seeds],
        "1/4 of the MACs": [bench.pruned({**stage, "target_macs": QUARTER}, s) for s in args.seeds],
        f"lowest at alignment {bench.target.channel_alignment}": [bench.pruned({**stage, "final_sparsity": MAX_RATIO}, s)
                                                                  for s in args.seeds],
    }
    return bench, rows


def main(argv=None) -> None:
    args = parse_args(argv)
    results = {name: family_rows(args, *family) for name, family in FAMILIES.items()}
    print(write_section(args.out, "models", markdown(args, results)))


def markdown(args, results: dict) -> str:
    bench = next(iter(results.values()))[0]
    data = bench.data
    lines = [
        "## Hugging Face families (`arch: hf:`, `bench/models.py`)", "",
        f"Dataset {args.dataset}{f' (limit {args.limit})' if args.limit else ''}: {len(data.train):,} train / {len(data.val):,} val / "
        f"{len(data.test):,} test. Each family is a small `transformers` config (below) with random initial weights, trained "
        f"{args.epochs} epochs from scratch (SGD, lr 0.1, cosine); each prune row fine-tunes it for {args.finetune_epochs} epochs "
        f"with `method: channel` on the cubic schedule at target {bench.target.name}'s channel alignment "
        f"({bench.target.channel_alignment}). 'Lowest' is `final_sparsity: {MAX_RATIO}`: every channel group cut to 1% and "
        f"rounded up to the alignment, the floor the dependency graph allows. Seeds {', '.join(map(str, args.seeds))}; test "
        f"accuracy in percent, mean ± sample std over seeds.", "",
        "| family | row | MACs (M) | share of MACs | params | test accuracy | per seed |", "|---|---|---|---|---|---|---|",
    ]
    for name, (_, rows) in results.items():
        base = next(iter(rows.values()))[0]
        for row, runs in rows.items():
            if "error" in runs[0]:
                lines.append(f"| {name} | {row} | unreachable: {runs[0]['error'][:300]} | | | | |")
                continue
            lines.append(f"| {name} | {row} | {runs[0]['macs'] / 1e6:.3f} | {runs[0]['macs'] / base['macs']:.1%} | "
                         f"{runs[0]['params']:,} | {points([r['test_accuracy'] for r in runs])} | {per_seed(runs)} |")
    lines += ["", "Configs (besides `num_channels: 1`, `num_labels: 10`): " +
              "; ".join(f"{name} `{model_type}` {kwargs}" + (f", trained with {train}" if train else "")
                        for name, (model_type, kwargs, train) in FAMILIES.items()) + ".", "",
              machine_line(command_line())]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
