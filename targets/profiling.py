"""`compress profile`: measure exported artifacts on this machine (ONNX Runtime, or trtexec for TensorRT engines)
and calibrate the cost model's efficiency and per-layer overhead from the measurements."""
from __future__ import annotations

import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path
from contextlib import nullcontext
from typing import Callable, Optional

import numpy as np
import onnx
import yaml

from compress import __version__
from compress.atomic import atomic_write, sha256_file, to_json
from compress.errors import CompressError, ExportError, RunDirError, TargetError, shown
from compress.metrics import LayerCost
from compress.report_html import render_html
from compress.export.runtime import RuntimeSetting, measured_choice, settings_for, sweep_settings
from compress.run_folder import locked_if_marked

from .cost import peak_terms_ms
from .profile import TargetProfile

PRECISION_FROM_NAME = re.compile(r"\.(fp32|fp16|int8)\.(onnx|engine)$")


def time_onnx(path: str, providers: list[str], batches: list[int], runs: int, warmup: int,
              settings: list[Optional[RuntimeSetting]]) -> dict:
    """Child-process body: latency percentiles per runtime setting and batch size (`sweep_settings`), the fastest
    setting's under `batches`, and the process's peak resident memory."""
    result = sweep_settings(path, providers, settings, batches, runs, warmup)
    rows = {row["label"]: row for row in result["settings"]}
    result["batches"] = {b: {**rows[label]["batches"][b], "setting": label} for b, label in result["fastest"].items()}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def available_providers(target: TargetProfile) -> list[str]:
    """The target's execution providers that this machine's ONNX Runtime has, best first (CPU at least)."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [p for p in target.execution_providers if p in have] or ["CPUExecutionProvider"]


TRTEXEC_LATENCY = re.compile(r"Latency: .*?median = ([\d.]+) ms.*?percentile\(90%\) = ([\d.]+) ms.*?percentile\(99%\) = ([\d.]+) ms")
TRTEXEC_THROUGHPUT = re.compile(r"Throughput: ([\d.]+) qps")


def time_engine(trtexec: str, engine: Path, input_shape: list[int], batches: list[int], runs: int) -> dict:
    """Latency of a TensorRT engine from trtexec's own summary lines."""
    result = {"provider": "trtexec", "batches": {}}
    for batch in batches:
        shape = "x".join(str(d) for d in [batch, *input_shape])
        out = subprocess.run([trtexec, f"--loadEngine={engine}", f"--shapes=input:{shape}", f"--iterations={runs}",
                              "--percentile=90,99"], capture_output=True, text=True)
        latency, throughput = TRTEXEC_LATENCY.search(out.stdout), TRTEXEC_THROUGHPUT.search(out.stdout)
        if out.returncode != 0 or latency is None:
            raise CompressError(f"{engine}: trtexec failed (exit {out.returncode}): {out.stderr.strip()[-300:]}")
        p50, p90, p99 = (float(v) for v in latency.groups())
        # trtexec's qps counts inferences of the whole batch
        qps = float(throughput.group(1)) if throughput else 1e3 / p50
        result["batches"][str(batch)] = {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "throughput_per_s": qps * batch}
    return result


def isolated(function: Callable[..., dict], *args) -> dict:
    """`function(*args)` in a fresh process (so its peak memory is its own); an error it raises, or its death by a
    signal (out of memory, a crash in native code), is an ExportError saying which."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=send_result, args=(sender, function, args), daemon=True)
    process.start()
    sender.close()
    try:
        while not receiver.poll(0.1) and process.is_alive():
            pass
        ok, value = receiver.recv() if receiver.poll(0) else (None, None)
    except EOFError:  # the process ended without sending anything
        ok = None
    finally:
        receiver.close()
        process.join()
    if ok is None:
        code = process.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        raise ExportError(f"the measuring process {how}{' (out of memory?)' if code == -signal.SIGKILL else ''}")
    if not ok:
        raise ExportError(value)
    return value


def send_result(sender, function: Callable[..., dict], args: tuple) -> None:
    """Child-process body of `isolated`: (True, result) or (False, the error's first line)."""
    try:
        result = (True, function(*args))
    except Exception as e:  # reported to the parent, which records the file as failed
        result = (False, (str(e).strip() or type(e).__name__).splitlines()[0])
    sender.send(result)
    sender.close()


def profile_artifacts(folder: Path, target: TargetProfile, batches: list[int], runs: int = 50, warmup: int = 10,
                      measure: Callable[..., dict] = time_onnx, threads: Optional[list[int]] = None) -> dict:
    """Measure every .onnx file (with `measure`, in a process of its own, under each runtime setting of
    `settings_for(target, threads)`) and every .engine where trtexec exists in `folder`; write profile.json there.
    A file that fails is recorded under `failed` and the others are still measured (see `check_failures`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CompressError(f"{folder}: not a folder of artifacts")
    files = sorted(folder.glob("*.onnx")) + sorted(folder.glob("*.engine"))
    if not files:
        raise CompressError(f"{folder}: no .onnx or .engine files to profile")
    run = run_of(folder)
    with locked_if_marked(run) if run else nullcontext():  # no pipeline run rewrites the files meanwhile
        profile = measure_files(folder, files, target, batches, runs, warmup, measure, settings_for(target, threads))
        atomic_write(folder / "profile.json", to_json(profile))
        if run is not None:
            merge_into_report(run, profile, folder / "profile.json")
    return profile


def run_of(folder: Path) -> Optional[Path]:
    """The run folder an artifacts folder belongs to (artifacts/, artifacts/<target>/ or one more level for a
    variant): the nearest one above it holding a report.json; None for a device bundle on its own."""
    return next((p for p in list(folder.absolute().parents)[:3] if (p / "report.json").is_file()), None)


def measure_files(folder: Path, files: list[Path], target: TargetProfile, batches: list[int], runs: int, warmup: int,
                  measure: Callable[..., dict], settings: list[Optional[RuntimeSetting]]) -> dict:
    """The profile.json record of `files`: measurements, skipped files and failed ones."""
    providers, trtexec = available_providers(target), shutil.which("trtexec")
    results, skipped, failed = [], [], []
    for path in files:
        if not path.is_file():  # a folder, a device or a pipe named like an artifact: opening it could block
            failed.append({"file": path.name, "reason": "not a regular file"})
            continue
        if path.suffix == ".engine":
            if trtexec is None:
                skipped.append(f"{path.name}: trtexec not found")
                continue
            shape = onnx_input_shape(next(folder.glob("*.onnx")))
            timing = time_engine(trtexec, path, shape, batches, runs)
        else:
            try:
                timing = isolated(measure, str(path), providers, batches, runs, warmup, settings)
            except ExportError as e:
                failed.append({"file": path.name, "reason": f"ONNX Runtime cannot load or run it ({e})"})
                continue
        match = PRECISION_FROM_NAME.search(path.name)
        results.append({"file": path.name, "precision": match.group(1) if match else None, **timing})
    return {"target": target.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "compress_version": __version__,
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
            "cpu_cores": os.cpu_count(), "runs": runs, "warmup": warmup, "results": results, "skipped": skipped,
            "failed": failed}


def check_failures(profile: dict, folder: Path) -> None:
    """Raise an ExportError naming every file `profile_artifacts` could not measure, and why, or saying that nothing
    was measured at all."""
    if not profile["results"] and not profile["failed"]:
        raise ExportError(f"{folder}: nothing was measured ({'; '.join(profile['skipped'])})")
    if profile["failed"]:
        raise ExportError("; ".join(f"{folder / f['file']}: {f['reason']}" for f in profile["failed"]) +
                          f"; export it again or remove it from {folder}. The measurements of the other files are "
                          f"in {folder / 'profile.json'}")


def merge_into_report(run: Path, profile: dict, saved: Path) -> None:
    """Add the measurements (also saved in `saved`) to the run's report.json and redraw report.html."""
    report_path = run / "report.json"
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(f"{report_path}: corrupt ({e}), so the measurements were not added to it; they are in "
                              f"{saved}. Rerun the pipeline to rewrite the report.") from None
        if not isinstance(report, dict):
            raise RunDirError(f"{report_path}: corrupt (a JSON {type(report).__name__}, not a report object), so the "
                              f"measurements were not added to it; they are in {saved}. Rerun the "
                              f"pipeline to rewrite the report.")
        report["profile"] = profile
        changed = measured_deployments(report, profile, saved.parent)
        atomic_write(report_path, to_json(report))
        if changed:
            update_manifest(run / "artifacts" / "manifest.json", {name: report["deployments"][name]["runtime"] for name in changed})
        atomic_write(run / "report.html", render_html(report).encode())


def measured_deployments(report: dict, profile: dict, folder: Path) -> list[str]:
    """Give each of the report's deployments on the profiled target whose file was swept here the runtime setting
    measured for it (replacing an estimate); the names of the targets it changed."""
    swept = {sha256_file(folder / r["file"]): r for r in profile["results"] if r.get("settings")}
    changed = []
    for name, deploy in (report.get("deployments") or {}).items():
        result = swept.get(deploy.get("sha256")) if isinstance(deploy, dict) else None
        if name != profile["target"] or result is None or (deploy.get("runtime") or {}).get("source") == "not applicable":
            continue
        deploy["runtime"] = measured_choice(result, f"by `compress profile` on {profile['created']}")
        if isinstance(report.get("deploy"), dict) and report["deploy"].get("target") == name:
            report["deploy"] = deploy
        changed.append(name)
    return changed


def update_manifest(path: Path, runtimes: dict[str, dict]) -> None:
    """Replace the runtime settings of the named targets' deployments in the run's manifest.json (when it has them)."""
    try:
        manifest = json.loads(path.read_text())
        entries = {name: manifest["deployments"][name] for name in runtimes}
    except FileNotFoundError:
        return  # a run from before manifests: the report holds the settings
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise RunDirError(f"{path}: corrupt ({type(e).__name__}: {e}), so the measured runtime settings were not added to "
                          f"it; they are in the report.json beside it. Rerun the pipeline to rewrite it.") from None
    for name, entry in entries.items():
        entry["runtime"] = runtimes[name]
    atomic_write(path, to_json(manifest))


def onnx_input_shape(path: Path) -> list[int]:
    """The per-example input shape of an ONNX model (batch axis dropped)."""
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value for d in dims[1:]]


def onnx_layer_costs(path: Path) -> list[LayerCost]:
    """Per-layer MACs and sizes of the Conv and Gemm/MatMul nodes of an ONNX graph, for one example."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    dq_source = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    weight = lambda name: inits.get(dq_source.get(name, name)) or shapes.get(name)  # noqa: E731
    costs = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        w, out = weight(node.input[1]), shapes.get(node.output[0])
        x = shapes.get(node.input[0])
        if not (w and out and x):
            continue
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        per_output = int(np.prod(w[1:])) if node.op_type == "Conv" else (w[1] if trans_b else w[0])
        costs.append(LayerCost(node.name, int(np.prod(out)) * per_output, int(np.prod(w)), int(np.prod(x)), int(np.prod(out))))
    return costs


def calibrate(profile: dict, target: TargetProfile, layers: dict[str, list[LayerCost]]) -> TargetProfile:
    """Fit compute efficiency, memory efficiency and per-layer overhead to the measurements (least relative error).

    `layers` maps each measured file to its per-layer costs (see `onnx_layer_costs`).
    """
    from scipy.optimize import nnls

    rows, measured = [], []
    for result in profile["results"]:
        if result["precision"] not in target.peak_tops or result["file"] not in layers:
            continue
        costs = layers[result["file"]]
        for batch, stats in result["batches"].items():
            rows.append([*peak_terms_ms(costs, result["precision"], target, int(batch)), len(costs) / 1e3])
            measured.append(stats["p50_ms"])
    if len(rows) < 3:
        raise TargetError("calibration needs at least three measurements (artifacts x batch sizes) in precisions the target runs")
    weights = 1 / np.array(measured)  # relative error: batch-1 and batch-32 count alike
    (inv_compute, inv_memory, overhead_us), _ = nnls(np.array(rows) * weights[:, None], np.array(measured) * weights)
    return target.model_copy(update={
        "name": f"{target.name}-calibrated", "aliases": [],
        "efficiency": float(np.clip(1 / inv_compute, 1e-4, 1.0)) if inv_compute > 0 else 1.0,
        "memory_efficiency": float(1 / inv_memory) if inv_memory > 0 else 1e3,
        "layer_overhead_us": float(overhead_us)})


def write_calibrated(profile: TargetProfile, path: Path, measured: dict) -> None:
    """Save a calibrated profile YAML (usable with --target PATH), the measurements in its header comment."""
    header = [f"# {profile.name}: efficiency and layer_overhead_us fitted by `compress profile --calibrate` "
              f"on {measured['created']}", "# measured p50 latency (ms) per file and batch size:"]
    header += [f"#   {r['file']}: " + ", ".join(f"b{b} {s['p50_ms']:.3f}" for b, s in r["batches"].items()) for r in measured["results"]]
    atomic_write(path, ("\n".join(header) + "\n" + yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False)).encode())


def parse_counts(text: str, option: str = "--batch", most: int = 65536, example: str = "1,8,32") -> list[int]:
    """`--batch 1,8,32` (or another option's comma-separated counts) as a list of integers from 1 to `most`."""
    try:
        counts = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1 or max(counts) > most:
        raise CompressError(f"{option}: expected comma-separated positive integers up to {most} such as {example}, got {shown(text)}")
    return counts


def summary_lines(profile: dict) -> list[str]:
    """A line per file (the fastest setting per batch size) and, below it, a line per runtime setting swept."""
    lines = []
    for r in profile["results"]:
        cells = [f"b{b}: p50 {s['p50_ms']:.3f} ms, p99 {s['p99_ms']:.3f} ms, {s['throughput_per_s']:.0f}/s"
                 + (f" ({s['setting']})" if "setting" in s else "") for b, s in r["batches"].items()]
        memory = f", peak RSS {r['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in r else ""
        lines.append(f"{r['file']} [{r['provider']}] " + "; ".join(cells) + memory)
        lines += [f"  {row['label']:<32} " + "; ".join(f"b{b}: p50 {s['p50_ms']:.3f} p90 {s['p90_ms']:.3f} p99 {s['p99_ms']:.3f} ms"
                                                      for b, s in row["batches"].items())
                  for row in r.get("settings", []) if len(r["settings"]) > 1]
    return lines + [f"skipped {s}" for s in profile["skipped"]] + [f"failed {f['file']}: {f['reason']}" for f in profile["failed"]]

