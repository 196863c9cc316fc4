"""`tensorrt`: TensorRT engines where TensorRT and a CUDA GPU exist; otherwise, and always for Jetson targets, a
device bundle (ONNX files, build_engine.sh with the exact trtexec flags, manifest.json) that builds them on the device.

Engines are specific to the GPU and TensorRT version they are built with, so a Jetson engine is built on the Jetson.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import time
from pathlib import Path

from compress import __version__
from compress.atomic import sha256_file, staged_dir
from compress.errors import ExportError
from compress.run_folder import check_replaceable

from . import Artifact, Exporter, ExportRequest, register_exporter

ENGINE_FLAGS = {"fp16": ["--fp16"], "int8": ["--int8", "--fp16"], "fp32": []}  # int8 keeps fp16 for layers left unquantized
SOURCE_FORMAT = {"fp32": "onnx", "fp16": "onnx", "int8": "onnx-int8"}  # TensorRT builds fp16 from the fp32 graph


def engine_plan(request: ExportRequest) -> list[dict]:
    """One engine per precision the target prefers and an ONNX source exists for: source file and trtexec flags."""
    sources = {a.format: a for a in request.artifacts if a.status == "ok"}
    sparse = request.target.sparsity_2_4 and request.spec.sparsity is not None and request.spec.sparsity.pattern == "2:4"
    shape = "x".join(str(d) for d in request.input_shape)
    opt, top = max(request.config.latency_batch_sizes), max(request.config.latency_batch_sizes) * 2
    plan = []
    for precision in request.target.preferred_precisions:
        source = sources.get(SOURCE_FORMAT[precision])
        if source is None:
            continue
        flags = [*ENGINE_FLAGS[precision], *(["--sparsity=enable"] if sparse else []),
                 f"--minShapes=input:1x{shape}", f"--optShapes=input:{opt}x{shape}", f"--maxShapes=input:{top}x{shape}",
                 "--timingCacheFile=timing.cache"]
        plan.append({"precision": precision, "onnx": Path(source.path).name, "engine": f"{request.name}.{precision}.engine",
                     "flags": flags, "onnx_sha256": source.sha256})
    return plan


def build_script(plan: list[dict], request: ExportRequest) -> str:
    """build_engine.sh: checks the TensorRT version, then one trtexec call per engine. Every value from the profile
    or the plan is shell-quoted, and comment text is checked to be one plain line."""
    t, q = request.target, shlex.quote
    needs = f"TensorRT {t.tensorrt_version or 'any'}" + (f" (JetPack {t.jetpack})" if t.jetpack else "")
    lines = [
        "#!/usr/bin/env bash",
        comment(f"Build TensorRT engines for {t.name} on the device itself (written by compress {__version__})."),
        comment(f"Needs {needs}; engines only run where they were built."),
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        '[ -x "$TRTEXEC" ] || { echo "trtexec not found: install TensorRT or set TRTEXEC=/path/to/trtexec" >&2; exit 1; }',
        "sha256sum --quiet -c checksums.sha256",
    ]
    if t.tensorrt_version:
        major = t.tensorrt_version.split(".")[0]
        lines.append(f'"$TRTEXEC" --help 2>&1 | grep -q {q("TensorRT.v" + major)} || '
                     f'echo {q("warning: this bundle was made for TensorRT " + t.tensorrt_version)} >&2')
    for entry in plan:
        args = [f"--onnx={entry['onnx']}", f"--saveEngine={entry['engine']}", *entry["flags"]]
        lines.append(" ".join(['"$TRTEXEC"', *(q(a) for a in args)]))
    lines.append(f"echo {q('engines built; measure them with: compress profile . --target ' + t.name)}")
    return "\n".join(lines) + "\n"


def comment(text: str) -> str:
    """A shell comment line; text that could end the comment (a line break, a control character) is refused."""
    if not re.fullmatch(r"[ -~]*", text):
        raise ExportError(f"refusing to write {text!r} into build_engine.sh: only printable ASCII on one line")
    return f"# {text}"


def is_bundle_file(name: str) -> bool:
    """Whether a name in a bundle folder is one this exporter (or build_engine.sh on the device) writes."""
    return name in ("manifest.json", "build_engine.sh", "checksums.sha256", "timing.cache", "profile.json") or \
        name.endswith((".onnx", ".engine"))


def tensorrt_available() -> bool:
    """TensorRT's Python package imports and a CUDA GPU is present."""
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def build_engines(plan: list[dict], folder: Path, request: ExportRequest) -> None:
    """Build each engine with the TensorRT builder here (same flags as build_engine.sh)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    shape = tuple(request.input_shape)
    opt = max(request.config.latency_batch_sizes)
    for entry in plan:
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse((folder / entry["onnx"]).read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT cannot parse {entry['onnx']}: {errors}")
        config = builder.create_builder_config()
        for flag in entry["flags"]:
            if flag in ("--fp16", "--int8"):
                config.set_flag(trt.BuilderFlag.FP16 if flag == "--fp16" else trt.BuilderFlag.INT8)
            if flag == "--sparsity=enable":
                config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
        profile = builder.create_optimization_profile()
        profile.set_shape("input", (1, *shape), (opt, *shape), (2 * opt, *shape))
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        (folder / entry["engine"]).write_bytes(bytes(engine))


@register_exporter
class TensorRTExporter(Exporter):
    format = "tensorrt"
    precision = "mixed"
    packages = True
    runtime = "tensorrt"

    def export(self, request: ExportRequest) -> Path:
        folder = request.out_dir / f"tensorrt-{request.target.name}"  # the profile's name is a safe file name
        check_replaceable(folder, is_bundle_file)
        with staged_dir(folder) as tmp:  # a bundle appears complete or not at all, replacing the last one
            self.write_bundle(tmp, request)
        return folder

    def write_bundle(self, folder: Path, request: ExportRequest) -> None:
        plan = engine_plan(request)
        for entry in plan:
            shutil.copy2(request.out_dir / entry["onnx"], folder / entry["onnx"])
        (folder / "checksums.sha256").write_text("".join(f"{e['onnx_sha256']}  {e['onnx']}\n" for e in plan))
        script = folder / "build_engine.sh"
        script.write_text(build_script(plan, request))
        script.chmod(0o755)
        built = request.target.device_class != "jetson" and tensorrt_available()
        if built:
            build_engines(plan, folder, request)
            self.notes.append("engines built here with the local TensorRT")
        else:
            self.notes.append("device bundle: run build_engine.sh on the target (no local TensorRT + CUDA, or a Jetson target)")
        (folder / "manifest.json").write_text(json.dumps(manifest(plan, request, built), indent=2) + "\n")


def manifest(plan: list[dict], request: ExportRequest, built: bool) -> dict:
    t, data = request.target, request.data
    return {
        "target": t.name, "tensorrt_version": t.tensorrt_version, "jetpack": t.jetpack, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "compress_version": __version__, "engines_built": built,
        "input": {"name": "input", "shape": [-1, *request.input_shape], "dtype": "float32",
                  "preprocess": {"scale": 1 / 255, "mean": data.mean, "std": data.std}},
        "output": {"name": "logits", "shape": [-1, data.num_classes], "dtype": "float32"},
        "sparsity_2_4": "--sparsity=enable" in sum((e["flags"] for e in plan), []),
        "engines": [{"precision": e["precision"], "onnx": e["onnx"], "onnx_sha256": e["onnx_sha256"], "engine": e["engine"],
                     "trtexec_flags": e["flags"]} for e in plan],
        "build": "./build_engine.sh",
        "profile": f"compress profile . --target {t.name}",
    }


def bundle_artifact(folder: Path, request: ExportRequest, notes: list[str]) -> Artifact:
    """The report record of a bundle: not run here; its ONNX sources were validated individually."""
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return Artifact(format="tensorrt", precision="+".join(request.target.preferred_precisions), path=str(folder),
                    size_bytes=size, sha256=sha256_file(folder / "manifest.json"), status="bundle",
                    reason="TensorRT engines are built and measured on the device", notes=notes)
