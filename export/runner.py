"""Export a model to every requested format, validate each artifact, apply the target's budgets, pick one to deploy."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from compress.config import ExportConfig
from compress.data import DataBundle
from compress.metrics import model_metrics
from compress.targets import TargetProfile
from compress.targets.cost import estimate_latency_ms
from compress.training import predict

from . import EXPORTERS, Artifact, ExportRequest
from .validate import validate_artifact


def default_formats(target: TargetProfile) -> list[str]:
    """fp32 ONNX as the reference, plus every registered format in one of the target's preferred precisions."""
    preferred = [f for f in EXPORTERS.names() if f != "onnx" and EXPORTERS.get(f).precision in target.preferred_precisions]
    return ["onnx", *preferred]


def export_and_validate(model, data: DataBundle, config: ExportConfig, target: TargetProfile, out_dir: Path,
                        eval_batch_size: int = 512) -> tuple[list[Artifact], Optional[dict]]:
    """Run the exporters, check every artifact with ONNX Runtime, and choose the deployable one."""
    model = model.cpu().eval()
    reference = predict(model, data.val, eval_batch_size)
    reference_accuracy = float((reference.argmax(1) == data.val.y).float().mean())
    cost = model_metrics(model, data.input_shape)
    artifacts = []
    for fmt in config.formats or default_formats(target):
        exporter = EXPORTERS.get(fmt)()
        path = exporter.export(ExportRequest(model, data.input_shape, out_dir, config, target))
        artifact = validate_artifact(path, fmt, exporter.precision, reference, data.val, reference_accuracy,
                                     config.latency_batch_sizes, config.latency_runs, eval_batch_size)
        if exporter.precision in target.peak_tops:
            artifact.estimated_latency_ms = estimate_latency_ms(cost["macs"], cost["params"], exporter.precision, target)
        apply_budgets(artifact, target)
        artifacts.append(artifact)
    return artifacts, choose_deployable(artifacts, target)


def apply_budgets(artifact: Artifact, target: TargetProfile) -> None:
    """Mark an artifact rejected when it breaks one of the target's budgets or precisions; say which."""
    budgets, reasons = target.budgets, []
    if artifact.precision not in target.precisions:
        reasons.append(f"{target.name} does not run {artifact.precision}")
    if budgets.max_accuracy_drop is not None and artifact.accuracy_drop > budgets.max_accuracy_drop:
        reasons.append(f"accuracy drop {artifact.accuracy_drop:.2%} exceeds the budget {budgets.max_accuracy_drop:.2%}")
    if budgets.size_mb is not None and artifact.size_bytes > budgets.size_mb * 1e6:
        reasons.append(f"size {artifact.size_bytes / 1e6:.2f} MB exceeds the budget {budgets.size_mb} MB")
    if reasons:
        artifact.status, artifact.reason = "rejected", "; ".join(reasons)


def choose_deployable(artifacts: list[Artifact], target: TargetProfile) -> Optional[dict]:
    """The accepted artifact with the lowest estimated latency on the target; ties go to the preferred precision."""
    accepted = [a for a in artifacts if a.status == "ok"]
    if not accepted:
        return None
    rank = {p: i for i, p in enumerate(target.preferred_precisions)}
    best = min(accepted, key=lambda a: (a.estimated_latency_ms or float("inf"), rank.get(a.precision, len(rank))))
    why = (f"lowest estimated batch-1 latency on {target.name} ({best.estimated_latency_ms:.3g} ms) among "
           f"{len(accepted)} accepted artifact(s) within the accuracy budget")
    return {"path": best.path, "format": best.format, "precision": best.precision, "reason": why}
