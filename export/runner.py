"""Export a model to every requested format, check each artifact, apply the target's budgets, pick one to deploy."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from compress.config import ExportConfig
from compress.data import DataBundle
from compress.errors import ExportError
from compress.metrics import layer_costs
from compress.pruning import follows_nm
from compress.targets import TargetProfile
from compress.targets.cost import estimate_latency_ms
from compress.training import predict

from . import EXPORTERS, Artifact, ExportRequest
from .preflight import check_graph
from .tensorrt import bundle_artifact
from .validate import validate_artifact


def default_formats(target: TargetProfile) -> list[str]:
    """fp32 ONNX as the reference, a file per preferred precision, then the packaging for the target's runtime."""
    files, packages = ["onnx"], []
    for name in EXPORTERS.names():
        cls = EXPORTERS.get(name)
        if cls.packages and cls.runtime == target.runtime:
            packages.append(name)
        elif not cls.packages and name != "onnx" and cls.precision in target.preferred_precisions:
            files.append(name)
    return files + packages


def export_and_validate(model, spec: dict, data: DataBundle, config: ExportConfig, target: TargetProfile, out_dir: Path,
                        eval_batch_size: int = 512) -> tuple[list[Artifact], Optional[dict]]:
    """Run the exporters, check every file with the pre-flight check and ONNX Runtime, choose the deployable one."""
    model = model.cpu().eval()
    reference = predict(model, data.val, eval_batch_size)
    reference_accuracy = float((reference.argmax(1) == data.val.y).float().mean())
    layers = layer_costs(model, data.input_shape)
    request = ExportRequest(model, checked_sparsity(model, spec), data, out_dir, config, target)
    for fmt in config.formats or default_formats(target):
        exporter = EXPORTERS.get(fmt)()
        try:
            path = exporter.export(request)
            if exporter.packages:
                request.artifacts.append(bundle_artifact(path, request, exporter.notes))
                continue
            check_graph(path, target)
            artifact = validate_artifact(path, fmt, exporter.precision, reference, data.val, reference_accuracy,
                                         config.latency_batch_sizes, config.latency_runs, eval_batch_size)
        except ExportError as e:
            if fmt == "onnx":
                raise
            request.artifacts.append(Artifact(format=fmt, precision=exporter.precision, path="", size_bytes=0, sha256="",
                                              status="failed", reason=str(e)))
            continue
        artifact.notes = exporter.notes
        if target.host:
            artifact.estimated_latency_ms, artifact.latency_source = artifact.latency_ms.get("1"), "measured"
        elif exporter.precision in target.peak_tops:
            artifact.estimated_latency_ms = estimate_latency_ms(layers, exporter.precision, target)
        apply_budgets(artifact, target)
        request.artifacts.append(artifact)
    return request.artifacts, choose_deployable(request.artifacts, target)


def checked_sparsity(model, spec: dict) -> dict:
    """The spec, without its N:M mark when a later stage (e.g. dense fine-tuning) broke the pattern."""
    if "sparsity_pattern" not in spec:
        return spec
    n, m = (int(v) for v in spec["sparsity_pattern"].split(":"))
    modules = dict(model.named_modules())
    if all(name in modules and follows_nm(modules[name].weight, n, m) for name in spec.get("sparse_layers", [])):
        return spec
    return {k: v for k, v in spec.items() if k not in ("sparsity_pattern", "sparse_layers")}


def apply_budgets(artifact: Artifact, target: TargetProfile) -> None:
    """Mark an artifact rejected when it breaks one of the target's budgets or precisions; say which."""
    budgets, reasons = target.budgets, []
    if artifact.precision not in target.precisions:
        reasons.append(f"{target.name} does not run {artifact.precision}")
    if budgets.max_accuracy_drop is not None and artifact.accuracy_drop > budgets.max_accuracy_drop:
        reasons.append(f"accuracy drop {artifact.accuracy_drop:.2%} exceeds the budget {budgets.max_accuracy_drop:.2%}")
    if budgets.size_mb is not None and artifact.size_bytes > budgets.size_mb * 1e6:
        reasons.append(f"size {artifact.size_bytes / 1e6:.2f} MB exceeds the budget {budgets.size_mb} MB")
    if budgets.latency_ms is not None and (artifact.estimated_latency_ms or 0) > budgets.latency_ms:
        artifact.notes.append(f"{artifact.latency_source} batch-1 latency {artifact.estimated_latency_ms:.3g} ms is over "
                              f"the target's {budgets.latency_ms} ms budget")
    if reasons:
        artifact.status, artifact.reason = "rejected", "; ".join(reasons)


def choose_deployable(artifacts: list[Artifact], target: TargetProfile) -> Optional[dict]:
    """The accepted artifact with the lowest batch-1 latency on the target; ties go to the preferred precision."""
    accepted = [a for a in artifacts if a.status == "ok"]
    if not accepted:
        return None
    rank = {p: i for i, p in enumerate(target.preferred_precisions)}
    best = min(accepted, key=lambda a: (a.estimated_latency_ms or float("inf"), rank.get(a.precision, len(rank))))
    deploy = {"path": best.path, "format": best.format, "precision": best.precision,
              "reason": f"lowest {best.latency_source} batch-1 latency on {target.name} ({best.estimated_latency_ms:.3g} ms) "
                        f"among {len(accepted)} artifact(s) within the accuracy budget"}
    bundle = next((a for a in artifacts if a.status == "bundle"), None)
    if bundle is not None:
        deploy["bundle"] = bundle.path
        deploy["reason"] += f"; build the {best.precision} engine on the device with {bundle.path}/build_engine.sh"
    return deploy
