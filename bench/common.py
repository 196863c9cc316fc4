"""Shared pieces of the benchmarks: the reference model, its cached training, and docs/benchmarks.md sections."""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from compress.atomic import atomic_write
from compress.checkpoint import VARIANTS, load_model_dir, read_spec, save_model_dir
from compress.config import DataConfig, sha256_json
from compress.context import RunContext
from compress.data import DataBundle
from compress.export.runtime import ROUNDS, RuntimeSetting, alternating_rounds
from compress.export.validate import ort_session
from compress.metrics import model_metrics
from compress.models import build_model, make_spec
from compress.pipeline import seed_everything
from compress.report import package_versions
from compress.training import TrainConfig, Trainer

# The reference model of the benchmarks: a 308k-parameter ResNet (37M MACs per 28x28 image).
REFERENCE = {"arch": "resnet_s", "kwargs": {"widths": [32, 64, 128], "depths": [1, 1, 1]}}
BATCHES = (1, 32)  # batch sizes every latency is measured at


def trained_model(arch: dict, data: DataBundle, data_cfg: DataConfig, train: TrainConfig, seed: int, cache: Path,
                  quiet: bool = True) -> tuple[torch.nn.Module, dict]:
    """Train `arch` on `data` (or reuse the cached result of the same settings) and return (model, spec)."""
    spec = make_spec(arch["arch"], data.in_channels, data.num_classes, arch["kwargs"])
    key = sha256_json({"spec": spec.model_dump(mode="json"), "data": data_cfg.model_dump(mode="json"), "train": train.model_dump(), "seed": seed})[:16]
    model, spec, _ = cached_model(cache / f"{Path(arch['arch']).stem}-{key}", lambda: train_from_scratch(arch, data, data_cfg, train, seed, quiet))
    return model, spec


def converged_reference(data: DataBundle, data_cfg: DataConfig, train: TrainConfig, cache: Path, quiet: bool = True,
                        arch: dict = REFERENCE) -> tuple[torch.nn.Module, dict, dict, Path]:
    """`arch` trained once, seed 0, with augmentation: the pretrained model that compression starts from, cached in
    `cache`; returns (model, spec, {"seconds", "curve"}, its folder)."""
    data_cfg = data_cfg.model_copy(update={"augment": True})
    key = sha256_json({"arch": arch, "data": data_cfg.model_dump(mode="json"), "train": train.model_dump()})[:16]
    folder = cache / f"reference-{key}"
    return (*cached_model(folder, lambda: train_from_scratch(arch, data, data_cfg, train, 0, quiet)), folder)


def train_from_scratch(arch: dict, data: DataBundle, data_cfg: DataConfig, train: TrainConfig, seed: int,
                       quiet: bool = True) -> tuple[torch.nn.Module, dict, dict]:
    """Build `arch` ({arch, kwargs}) with seeded weights and train it on `data`; returns (model, spec, {"curve": the
    per-epoch metrics})."""
    seed_everything(seed)
    spec = make_spec(arch["arch"], data.in_channels, data.num_classes, arch["kwargs"])
    model = build_model(spec)
    ctx = RunContext(data=data, data_config=data_cfg, seed=seed, quiet=quiet, stage_name=arch["arch"])
    return model, spec, {"curve": Trainer(model, train, ctx).fit()}


def cached_model(folder: Path, make: Callable[[], tuple]) -> tuple[torch.nn.Module, dict, dict]:
    """(model, spec, metrics) saved in `folder`, or made by `make()` -> (model, spec[, metrics]) and saved there; the
    metrics gain make's wall time ("seconds")."""
    if read_spec(folder):
        return load_model_dir(folder)
    start = time.perf_counter()
    model, spec, *extra = make()
    metrics = {**(extra[0] if extra else {}), "seconds": time.perf_counter() - start}
    save_model_dir(folder, model, spec, metrics)
    return model, spec, metrics


def family_member(stage: Path, metrics: dict, name: str) -> tuple[torch.nn.Module, dict, dict]:
    """Grid member `name` of the slice stage that ran in folder `stage` with `metrics`: its primary output (the first
    target's choice) or one of its variants; returns (model, spec, metrics)."""
    primary = next(iter(metrics["chosen"].values()), None)
    return load_model_dir(stage if name == primary else stage / VARIANTS / name)


def scaled_reference(data: DataBundle, key: str, value: float) -> dict:
    """Kwargs of a resnet_s with the reference's depths and widths scaled (multiples of 8) so that `key` ('macs' or
    'params') comes closest to `value`."""
    def widths(scale: float) -> tuple[int, ...]:
        return tuple(max(8, round(w * scale / 8) * 8) for w in REFERENCE["kwargs"]["widths"])

    cost = {}
    for w in {widths(s / 100) for s in range(5, 101)}:
        model = build_model(make_spec(REFERENCE["arch"], data.in_channels, data.num_classes, {**REFERENCE["kwargs"], "widths": list(w)}))
        cost[w] = model_metrics(model, data.input_shape)[key]
    best = min(cost, key=lambda w: abs(cost[w] / value - 1))
    return {**REFERENCE["kwargs"], "widths": list(best)}


THREADS = tuple(sorted({1, os.cpu_count() or 1}))  # ONNX Runtime intra-op threads every file is timed with


@dataclass
class Timings:
    """Per file, thread count and batch size, the median wall time (ms) of each alternating round."""

    rounds: dict[str, dict[int, dict[int, list[float]]]]

    def spread(self, name: str, batch: int, threads: int = THREADS[-1]) -> dict[str, float]:
        """min / median / max over the rounds."""
        values = self.rounds[name][threads][batch]
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    def median(self, name: str, batch: int, threads: int = THREADS[-1]) -> float:
        return self.spread(name, batch, threads)["median"]

    def medians(self, threads: int = THREADS[-1]) -> dict[str, dict[int, float]]:
        """{file: {batch: median}} at one thread count."""
        return {name: {b: self.median(name, b, threads) for b in BATCHES} for name in self.rounds}

    def speedup(self, slow: str, fast: str, batch: int, threads: int = THREADS[-1]) -> dict[str, float]:
        """min / median / max over rounds of slow's time over fast's in the same round."""
        ratios = [s / f for s, f in zip(self.rounds[slow][threads][batch], self.rounds[fast][threads][batch])]
        return {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)}

    def cell(self, name: str, batch: int, threads: int = THREADS[-1]) -> str:
        """'median (min-max)' in ms, for a table."""
        s = self.spread(name, batch, threads)
        return f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"

    def speedup_cell(self, slow: str, fast: str, batch: int, threads: int = THREADS[-1]) -> str:
        r = self.speedup(slow, fast, batch, threads)
        return f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def latencies(paths: dict[str, str], data: DataBundle, runs: int, rounds: int = ROUNDS) -> Timings:
    """Time every ONNX file with 1 and with all of this machine's ONNX Runtime threads at each batch size: `rounds`
    alternating rounds of `runs` calls, the files and settings taking turns so that machine noise hits them alike."""
    sessions = {(name, t): ort_session(Path(path), RuntimeSetting(t)) for name, path in paths.items() for t in THREADS}
    times = alternating_rounds(sessions, {b: data.val.x[:b].numpy() for b in BATCHES}, runs, rounds)
    return Timings({name: {t: {b: [statistics.median(r) for r in times[name, t][b]] for b in BATCHES} for t in THREADS}
                    for name in paths})


def gemm_peaks(threads: int, size: int = 1024, runs: int = 20) -> dict[str, float]:
    """This machine's measured dense peaks in TOPS (1 MAC = 2 ops) on `threads` ONNX Runtime threads: a `size`-square
    fp32 MatMul and a uint8 x int8 MatMulInteger (the kernel family of INT8 models), median of `runs` calls."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng, peaks = np.random.default_rng(0), {}
    for precision, a_type, b in (("fp32", TensorProto.FLOAT, rng.standard_normal((size, size)).astype(np.float32)),
                                 ("int8", TensorProto.UINT8, rng.integers(-128, 128, (size, size), dtype=np.int8))):
        op = "MatMul" if precision == "fp32" else "MatMulInteger"
        graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], f"gemm-{precision}",
                                  [helper.make_tensor_value_info("a", a_type, [size, size])],
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT if precision == "fp32" else TensorProto.INT32, None)],
                                  [numpy_helper.from_array(b, "b")])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        a = rng.standard_normal((size, size)).astype(np.float32) if precision == "fp32" else rng.integers(0, 256, (size, size), dtype=np.uint8)
        session.run(None, {"a": a})
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, {"a": a})
            times.append(time.perf_counter() - start)
        peaks[precision] = 2 * size ** 3 / statistics.median(times) / 1e12
    return peaks


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark shares: data and seeds."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (default) or bundled (8k-example subset)")
    p.add_argument("--data-root", type=Path, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--limit", type=int, help="cap on examples per split (smoke or reduced runs)")
    p.add_argument("--seeds", nargs="+", action=SeedList, default=[0, 1, 2], help="e.g. 0 1 2 or 0,1,2")
    return p


def pipeline_data(args: argparse.Namespace, batch_size: int = 128) -> dict:
    """A pipeline file's `data` entry from the shared options."""
    data = {"dataset": args.dataset, "batch_size": batch_size}
    if args.data_root:
        data["root"] = str(args.data_root.resolve())
    if args.limit:
        data["limit"] = args.limit
    return data


class SeedList(argparse.Action):
    """Integers given space- or comma-separated (`--seeds 1 2 3`, `--seeds 1,2,3`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, [int(v) for value in values for v in value.split(",") if v])
        except ValueError:
            parser.error(f"{option_string}: expected integers, got {' '.join(values)}")


def machine_line(command: str) -> str:
    """Where and how a result was produced: command, date, machine and the versions that shape results."""
    versions = ", ".join(f"{name} {v}" for name, v in package_versions().items() if name != "platform")
    return (f"Generated by `{command}` on {time.strftime('%Y-%m-%d')}, {platform.machine()} "
            f"({platform.processor() or 'cpu'}), {torch.get_num_threads()} threads; {versions}.")


def command_line() -> str:
    return "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])


def write_section(path: Path, name: str, body: str) -> str:
    """Replace the `name` section of a markdown file (between its markers), or append it; returns the section."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    section = f"{start}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.is_file() else "# Benchmarks\n\nEach section is written by the script it names; rerun it to refresh.\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end) + "\n?", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    atomic_write(path, text.encode())
    return section
