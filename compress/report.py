"""report.json (schema in docs/report.md) and the console summary."""
from __future__ import annotations

import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Optional

from . import __version__
from .atomic import atomic_write, to_json
from .report_html import render_html

SCHEMA_VERSION = 2  # 2: variants, several targets (targets, deployments; artifacts name their variant and target)


def package_versions() -> dict[str, str]:
    """Versions of Python, compress and the libraries that shape results."""
    versions = {"python": platform.python_version(), "compress": __version__, "platform": platform.platform()}
    for name in ("torch", "onnx", "onnxruntime", "numpy", "nncf", "torch-pruning", "tensorrt"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def build_report(pipeline, targets: list, run_dir: Path, data, spec, stages: list[dict], artifacts: list,
                 deployments: dict[str, Optional[dict]], test: Optional[dict], seconds: float, device: str) -> dict:
    """Everything a reader needs to judge and reproduce the run (schema: docs/report.md)."""
    cfg = pipeline.config
    return {
        "schema_version": SCHEMA_VERSION,
        "name": cfg.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pipeline": str(pipeline.path),
        "config_hash": pipeline.config_hash(),
        "seed": cfg.seed,
        "device": device,
        "seconds": seconds,
        "versions": package_versions(),
        "target": targets[0].model_dump(mode="json"),
        "targets": [t.model_dump(mode="json") for t in targets],
        "data": {"dataset": data.name, "train": len(data.train), "val": len(data.val),
                 "test": len(data.test) if data.test is not None else 0, "input_shape": list(data.input_shape),
                 "num_classes": data.num_classes, "preprocess": {"scale": 1 / 255, "mean": data.mean, "std": data.std}},
        "model": spec.model_dump(mode="json"),
        "stages": stages,
        "variants": [{"stage": s["label"], **v} for s in stages for v in s.get("variants", [])],
        "final": {"val_accuracy": stages[-1]["metrics"]["val_accuracy"] if stages else None,
                  "test_accuracy": test["accuracy"] if test else None},
        "artifacts": [a.to_dict() for a in artifacts],
        "deploy": deployments[targets[0].name],
        "deployments": deployments,
        "run_dir": str(run_dir),
    }


def write_report(run_dir: Path, report: dict) -> Path:
    """report.json and its rendering, report.html, beside it."""
    path = run_dir / "report.json"
    atomic_write(path, to_json(report))
    atomic_write(run_dir / "report.html", render_html(report).encode())
    return path


def print_summary(report: dict, out=sys.stdout) -> None:
    """A compact table of stages, variants and artifacts, and what to deploy on each target."""
    rows = [("stage", "status", "params", "MACs", "sparsity", "val acc", "time")]
    for s in report["stages"]:
        m = s["metrics"]
        rows.append((f"{s['index'] + 1}. {s['label']}", s["status"], f"{m['params']:,}", f"{m['macs'] / 1e6:.2f}M",
                     f"{m['sparsity']:.1%}", f"{m['val_accuracy']:.2%}", f"{m['seconds']:.1f}s"))
    print(table(rows), file=out)
    if report["variants"]:
        rows = [("variant", "stage", "params", "MACs", "val acc")]
        rows += [(v["name"], v["stage"], f"{v['metrics']['params']:,}", f"{v['metrics']['macs'] / 1e6:.2f}M",
                  f"{v['metrics']['val_accuracy']:.2%}") for v in report["variants"]]
        print("\n" + table(rows), file=out)
    several = len(report["targets"]) > 1
    rows = [(*(("target",) if several else ()), "artifact", "precision", "size", "max|diff|", "top-1 agree", "val acc",
             "b1 here", "b32 here", "b1 target", "status")]
    for a in report["artifacts"]:
        rows.append((*((a["target"],) if several else ()), *artifact_row(a)))
    print("\n" + table(rows), file=out)
    final = report["final"]
    if final["test_accuracy"] is not None:
        print(f"\ntest accuracy (final model): {final['test_accuracy']:.2%}", file=out)
    for name, deploy in report["deployments"].items():
        where = f" on {name}" if several else ""
        print(f"deploy{where}: {deploy['path']} ({deploy['reason']})" if deploy else
              f"deploy{where}: none (every artifact was rejected or failed)", file=out)
        runtime = (deploy or {}).get("runtime")
        if runtime:
            setting = runtime["setting"]["label"] if runtime.get("setting") else "runtime defaults"
            print(f"  run it with {setting} ({runtime['source']}: {runtime['reason']})", file=out)
    print(f"report: {report['run_dir']}/report.json", file=out)


def artifact_row(a: dict) -> tuple:
    """One line of the artifact table; bundles and failed exports have no measurements."""
    status = a["status"] if a["status"] == "ok" else f"{a['status']}: {a['reason']}"
    name = "/".join(p for p in (a.get("variant"), Path(a["path"]).name or a["format"]) if p)
    if not a["parity"]:
        return (name, a["precision"], f"{a['size_bytes'] / 1e3:.0f} kB" if a["size_bytes"] else "-", "-", "-", "-", "-", "-", "-", status)
    latency = a["latency_ms"]
    target = f"{a['estimated_latency_ms']:.3g} ms ({'meas' if a['latency_source'] == 'measured' else 'est'}.)" if a["estimated_latency_ms"] is not None else "-"
    return (name, a["precision"], f"{a['size_bytes'] / 1e3:.0f} kB", f"{a['parity']['max_abs_diff']:.1e}",
            f"{a['parity']['top1_agreement']:.2%}", f"{a['accuracy']:.2%}",
            *(f"{latency[b]:.3f} ms" if b in latency else "-" for b in ("1", "32")), target, status)


def table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
