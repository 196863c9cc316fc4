"""Export a model to every requested format, check each artifact, apply the target's budgets, and choose what to deploy:
per model the fastest artifact within the budgets, per target the most accurate model of the family among those."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from compress.atomic import atomic_write, to_json
from compress.config import ExportConfig
from compress.data import DataBundle
from compress.errors import ExportError
from compress.metrics import layer_costs
from compress.methods.pruning.masks import follows_nm
from compress.models import ModelSpec
from compress.targets import TargetProfile
from compress.targets.cost import estimate_latency_ms, estimate_memory_mb
from compress.training import predict

from . import EXPORTERS, Artifact, ExportRequest
from .onnx import DYNAMO_OPSET, stamp_spec
from .preflight import check_graph
from .runtime import runtime_choice
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


def export_problems(config: ExportConfig, targets: list[TargetProfile]) -> list[str]:
    """What is wrong with the export settings for these targets, found before anything trains: unknown or repeated
    formats, packaging for another runtime, opsets the targets or the exporter cannot take, and targets on which no
    requested format could ever be deployed."""
    problems, formats = [], config.formats or []
    for i, fmt in enumerate(formats):
        if fmt not in EXPORTERS:
            problems.append(f"export.formats[{i}]: {EXPORTERS.miss_message(fmt)}")
            continue
        if fmt in formats[:i]:
            problems.append(f"export.formats[{i}]: {fmt} is listed twice")
        cls = EXPORTERS.get(fmt)
        problems += [f"export.formats[{i}]: {fmt} packages for the {cls.runtime} runtime; target {t.name} runs {t.runtime}"
                     for t in targets if cls.packages and cls.runtime != t.runtime]
    if config.exporter == "dynamo" and config.opset is not None and config.opset < DYNAMO_OPSET:
        problems.append(f"export.opset: {config.opset} is below {DYNAMO_OPSET}, the lowest the dynamo exporter writes")
    for target in targets:
        if config.opset is not None and config.opset > target.max_opset:
            problems.append(f"export.opset: {config.opset} is above target {target.name}'s maximum opset {target.max_opset}")
        if config.exporter == "dynamo" and target.max_opset < DYNAMO_OPSET:
            problems.append(f"export.exporter: dynamo writes opset {DYNAMO_OPSET} or above, and target {target.name} parses up "
                            f"to {target.max_opset}; use exporter: torchscript")
        files = [EXPORTERS.get(f) for f in formats or default_formats(target) if f in EXPORTERS]
        precisions = [cls.precision for cls in files if not cls.packages]
        if precisions and not set(precisions) & set(target.precisions):
            problems.append(f"export.formats: no format asked for can be deployed on target {target.name}, which runs "
                            f"{', '.join(target.precisions)}; ask for one in those precisions (e.g. onnx-int8 for int8)")
    return problems


def export_and_validate(model, spec: ModelSpec, data: DataBundle, config: ExportConfig, target: TargetProfile,
                        out_dir: Path, eval_batch_size: int = 512,
                        variant: Optional[str] = None, seconds: Optional[dict[str, float]] = None) -> tuple[list[Artifact], Optional[dict]]:
    """Run the exporters, check every file with the pre-flight check and ONNX Runtime, choose the deployable one.
    `variant` names the model of the stage family being exported (None: the primary model); `seconds` collects the
    wall time of exporting and of validating."""
    seconds = {} if seconds is None else seconds
    seconds.setdefault("export", 0.0)
    seconds.setdefault("validate", 0.0)
    model, data = model.cpu().eval(), data.for_spec(spec)  # a class-subset head is measured on its classes
    reference = predict(model, data.val, eval_batch_size)
    reference_accuracy = float((reference.argmax(1) == data.val.y).float().mean())
    layers = layer_costs(model, data.input_shape)
    request = ExportRequest(model, checked_sparsity(model, spec), data, out_dir, config, target)
    for fmt in config.formats or default_formats(target):
        exporter = EXPORTERS.get(fmt)()
        started = time.perf_counter()
        try:
            path = exporter.export(request)
            if path.suffix == ".onnx":
                stamp_spec(path, request.spec)
            seconds["export"] += time.perf_counter() - started
            if exporter.packages:
                request.artifacts.append(bundle_artifact(path, request, exporter.notes))
                continue
            started = time.perf_counter()
            check_graph(path, target)
            artifact = validate_artifact(path, fmt, exporter.precision, reference, data.val, reference_accuracy,
                                         config.latency_batch_sizes, config.latency_runs, eval_batch_size)
            seconds["validate"] += time.perf_counter() - started
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
        artifact.estimated_memory_mb = estimate_memory_mb(layers, artifact.size_bytes, exporter.precision)
        apply_budgets(artifact, target)
        request.artifacts.append(artifact)
    for artifact in request.artifacts:
        artifact.variant, artifact.target = variant, target.name
    return request.artifacts, choose_deployable(request.artifacts, target)


def export_for_targets(families: dict[str, list[tuple[Optional[str], object, ModelSpec]]], data: DataBundle,
                       config: ExportConfig, targets: list[TargetProfile], out_dir: Path,
                       eval_batch_size: int = 512) -> tuple[list[Artifact], dict]:
    """Export and validate every (variant name or None, model, spec) of each target's family (target name -> models)
    for that target, in `out_dir[/<target>][/<variant>]`, and choose per target: the deployment matrix (target name
    -> deploy or None). A model whose export fails is recorded as failed; the others are still exported."""
    artifacts, deployments = [], {}
    for target in targets:
        folder = out_dir if len(targets) == 1 else out_dir / target.name
        choices = []
        for variant, model, spec in families[target.name]:
            try:
                made, deploy = export_and_validate(model, spec, data, config, target, folder / (variant or ""),
                                                   eval_batch_size, variant=variant)
            except ExportError as e:
                made, deploy = [Artifact(format="onnx", precision="fp32", path="", size_bytes=0, sha256="", status="failed",
                                         reason=str(e), variant=variant, target=target.name)], None
            artifacts += made
            choices += [(deploy, spec.classes is None)] if deploy else []
        # a model for a class subset does another task: it is exported and validated, but deployed only when no
        # model of the whole task has a deployable artifact
        deploy = choose_across([d for d, whole in choices if whole] or [d for d, _ in choices])
        if deploy is not None:
            deploy["runtime"] = runtime_choice(deploy, target, config.latency_batch_sizes, config.latency_runs)
        deployments[target.name] = deploy
    return artifacts, deployments


def write_manifest(folder: Path, deployments: dict[str, Optional[dict]]) -> None:
    """`folder/manifest.json`: per target, the file to deploy (relative to `folder`), its checksum, and the runtime
    settings to run it with; what a deployment script reads instead of the whole report."""
    def entry(deploy: dict) -> dict:
        where = {key: Path(deploy[key]).absolute().relative_to(folder.absolute()).as_posix()
                 for key in ("path", "bundle") if deploy.get(key)}
        return {**where, **{key: deploy.get(key) for key in ("sha256", "format", "precision", "variant", "runtime")}}

    atomic_write(folder / "manifest.json", to_json({"deployments": {name: entry(d) if d else None
                                                                    for name, d in deployments.items()}}))


def checked_sparsity(model, spec: ModelSpec) -> ModelSpec:
    """The spec, without its N:M mark when a later stage (e.g. dense fine-tuning) broke the pattern."""
    if spec.sparsity is None:
        return spec
    n, m = spec.sparsity.nm
    modules = dict(model.named_modules())
    if all(name in modules and follows_nm(modules[name].weight, n, m) for name in spec.sparsity.layers):
        return spec
    return spec.marked(None)


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
        reasons.append(f"{artifact.latency_source} batch-1 latency {artifact.estimated_latency_ms:.3g} ms exceeds the "
                       f"budget {budgets.latency_ms} ms")
    if budgets.memory_mb is not None and (artifact.estimated_memory_mb or 0) > budgets.memory_mb:
        reasons.append(f"estimated memory {artifact.estimated_memory_mb:.3g} MB exceeds the budget {budgets.memory_mb} MB")
    if reasons:
        artifact.status, artifact.reason = "rejected", "; ".join(reasons)


def choose_deployable(artifacts: list[Artifact], target: TargetProfile) -> Optional[dict]:
    """Of one model's artifacts, the accepted one with the lowest batch-1 latency on the target; ties go to the
    preferred precision."""
    accepted = [a for a in artifacts if a.status == "ok"]
    if not accepted:
        return None
    rank = {p: i for i, p in enumerate(target.preferred_precisions)}
    best = min(accepted, key=lambda a: (a.estimated_latency_ms or float("inf"), rank.get(a.precision, len(rank))))
    deploy = {"path": best.path, "sha256": best.sha256, "format": best.format, "precision": best.precision,
              "variant": best.variant, "target": target.name, "accuracy": best.accuracy, "estimated_latency_ms": best.estimated_latency_ms,
              "reason": f"lowest {best.latency_source} batch-1 latency on {target.name} ({best.estimated_latency_ms:.3g} ms) "
                        f"among {len(accepted)} artifact(s) within its budgets"}
    bundle = next((a for a in artifacts if a.status == "bundle" and a.variant == best.variant), None)
    if bundle is not None:
        deploy["bundle"] = bundle.path
        deploy["reason"] += f"; build the {best.precision} engine on the device with {bundle.path}/build_engine.sh"
    return deploy


def choose_across(choices: list[dict]) -> Optional[dict]:
    """Across the models of a family (each with its deployable artifact from `choose_deployable`), the most accurate
    one; ties go to the faster. None when no model has a deployable artifact."""
    if not choices:
        return None
    best = max(choices, key=lambda d: (d["accuracy"], -(d["estimated_latency_ms"] or 0.0)))
    if len(choices) == 1:
        return best
    name = best["variant"] or "the primary model"
    return {**best, "reason": f"most accurate of {len(choices)} models with an artifact within {best['target']}'s budgets: "
                              f"{name} ({best['accuracy']:.2%} validation accuracy); {best['reason']}"}
