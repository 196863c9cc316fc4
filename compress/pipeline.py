"""The run loop: resolve the targets, check every stage, run or resume stages with atomic checkpoints (each stage's
model family included), export and validate for every target, choose per target, report."""
from __future__ import annotations

import random
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml

from .atomic import atomic_write
from .checkpoint import VARIANTS, load_model_dir, read_metrics, read_spec, save_model_dir, verify_model_dir
from .config import problems_message, safe_name, sha256_json
from .context import RunContext, say
from .data import load_data
from .distributed import Distributed, init_from_env, on_main, shutdown
from .errors import ConfigError, ExportError, ModelError, RunDirError, described, shown
from .metrics import model_metrics
from .models import build_model, load_weights, make_spec
from .models.hf import initial_weights
from .pipeline_file import Pipeline, load_pipeline
from .report import build_report, print_summary, write_report
from .run_folder import remove_stale_stages, run_folder
from .training import evaluate, evaluating


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stage_folder(run_dir: Path, index: int, stage_type: str) -> Path:
    return run_dir / "stages" / f"{index + 1:02d}-{stage_type}"


def prepare_run_dir(run_dir: Path, hold: ExitStack, resolved_config: str) -> None:
    """Claim and lock the run folder for this run (held until `hold` closes), then save the resolved config."""
    try:
        hold.enter_context(run_folder(run_dir))
    except OSError as e:
        raise RunDirError(f"run directory {run_dir} is not writable ({e.strerror}); choose another with --run-dir") from None
    atomic_write(run_dir / "pipeline.resolved.yaml", resolved_config.encode())


def resolve_targets(pipeline: Pipeline, override: Optional[str]) -> list:
    """The run's target profiles, from `--target a,b,c` or the file; a name that resolves to no profile, or one
    profile named twice, is an error before anything runs."""
    from .targets import resolve

    names = pipeline.target_names(override)
    if not names:
        raise ConfigError(f"{pipeline.path}: no target: set `target:` in the file or pass --target NAME (see `compress targets`)")
    profiles, seen = [], {}
    for name in names:
        profile = resolve(name)
        if profile.name in seen:
            raise ConfigError(f"target {profile.name} is listed twice (as {seen[profile.name]!r} and {name!r})")
        seen[profile.name] = name
        profiles.append(profile)
    return profiles


def check_run(pipeline: Pipeline, targets: list) -> None:
    """Settings that can only be checked against the registries and the targets, all at once."""
    from .export.runner import export_problems

    problems = export_problems(pipeline.config.export, targets)
    if len(targets) > 1:
        names = ", ".join(t.name for t in targets)
        for i, stage in enumerate(pipeline.stages):
            reason = stage.target_dependence()
            if reason and not stage.variant_per_target:
                problems.append(f"stages[{i}] ({stage.label}): its result depends on the target: {reason}. With several "
                                f"targets ({names}) it would fit only the first; make it target-independent as said, or "
                                f"run one target at a time")
    if problems:
        raise ConfigError(problems_message(pipeline.path, "pipeline", problems))


def check_model_fits_data(pipeline: Pipeline, data) -> None:
    """Configured classes and input channels against the dataset (a mismatch would otherwise fail inside training)."""
    model, where = pipeline.config.model, f"{pipeline.path}: model"
    if model.num_classes is not None and model.num_classes < data.num_classes:
        raise ConfigError(f"{where}.num_classes: {model.num_classes} is fewer than the {data.num_classes} classes of dataset "
                          f"'{data.name}' (labels 0-{data.num_classes - 1}); remove it to use the dataset's")
    if model.in_channels is not None and model.in_channels != data.in_channels:
        raise ConfigError(f"{where}.in_channels: {model.in_channels}, but the images of dataset '{data.name}' have "
                          f"{data.in_channels} channel(s); remove it to use the dataset's")


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available on this machine; use --device cpu")
    return torch.device(name)


def run_pipeline(path: str | Path | Pipeline, target: Optional[str] = None, run_dir: Optional[str | Path] = None,
                 resume: bool = True, quiet: bool = False, device: str = "cpu") -> Optional[dict]:
    """Run a pipeline file end to end and return its report (also written to <run_dir>/report.json). `target` is
    one name or several, comma-separated (`--target`).

    Under torchrun (WORLD_SIZE > 1) every rank trains its share of each batch; rank 0 writes files and returns the
    report, the other ranks return None.
    """
    started = time.time()
    pipeline = path if isinstance(path, Pipeline) else load_pipeline(path)
    targets = resolve_targets(pipeline, target)
    check_run(pipeline, targets)
    torch_device = resolve_device(device)
    group = init_from_env(device)
    folder = Path(run_dir) if run_dir else Path("runs") / pipeline.config.name
    try:
        with ExitStack() as hold:
            return execute(pipeline, targets, folder, resume, quiet or not group.is_main,
                           device_for_rank(torch_device, group), group, started, hold)
    finally:
        shutdown(group)


def device_for_rank(device: torch.device, group: Distributed) -> torch.device:
    """Each torchrun process on a GPU machine takes the GPU of its local rank."""
    if device.type != "cuda" or not group.enabled:
        return device
    torch.cuda.set_device(group.local_rank)
    return torch.device("cuda", group.local_rank)


def targets_fingerprint(targets: list) -> str:
    """What target-dependent stages' hashes see: one profile's fingerprint, or all of them."""
    from .targets import fingerprint

    return fingerprint(targets[0]) if len(targets) == 1 else sha256_json([fingerprint(t) for t in targets])


def execute(pipeline: Pipeline, targets: list, run_dir: Path, resume: bool, quiet: bool, torch_device: torch.device,
            group: Distributed, started: float, hold: ExitStack) -> Optional[dict]:
    """Stages (resumed or run), export, report; under torchrun every rank trains and only rank 0 writes, holding the
    run folder's lock until `hold` closes."""
    from .export.runner import export_for_targets, write_manifest

    cfg, stages = pipeline.config, pipeline.stages
    on_main(group, lambda: prepare_run_dir(run_dir, hold, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)))

    data = load_data(cfg.data, cfg.seed)
    check_model_fits_data(pipeline, data)
    spec = make_spec(cfg.model.arch, cfg.model.in_channels or data.in_channels, cfg.model.num_classes or data.num_classes,
                     cfg.model.kwargs)
    hashes = [pipeline.stage_hash(i, targets_fingerprint(targets)) for i in range(len(stages))]
    folders = [stage_folder(run_dir, i, stage.config.type) for i, stage in enumerate(stages)]

    done = finished_prefix(folders, hashes) if resume else 0
    records = [resumed_record(folder) for folder in folders[:done]]  # every reused folder is verified, not only the last
    if done:
        model, spec, _ = load_model_dir(folders[done - 1], torch_device)
        say(f"resuming {run_dir}: reusing finished stage(s) 1-{done} ({', '.join(r['label'] for r in records)})", quiet)
    else:
        seed_everything(cfg.seed)  # initial weights follow the config's seed
        model = build_model(spec)
        weights = cfg.model.weights or initial_weights(cfg.model.arch)
        if weights:
            load_weights(model, weights)
        model.to(torch_device)

    check_model_runs(model, spec, data)

    def context(i: int) -> RunContext:
        return RunContext(data=data, data_config=cfg.data, run_dir=run_dir, target=targets[0], targets=targets,
                          device=torch_device, seed=cfg.seed + i, quiet=quiet, stage_name=stages[i].label,
                          stage_dir=run_dir / "work" / folders[i].name, dist=group,
                          earlier={stages[j].label: folders[j] for j in range(i)})

    for i in range(done, len(stages)):  # every setting against the model, data and targets before anything trains
        stages[i].check(model, spec, context(i))
    for i in range(done, len(stages)):
        stage, ctx = stages[i], context(i)
        seed_everything(ctx.seed)
        say(f"stage {i + 1}/{len(stages)}: {stage.label}", quiet)
        t0 = time.time()
        result = stage.run(model, spec, ctx)
        model, spec = result.model, result.spec or spec
        check_variant_names(result.variants, records, stage.label)
        metrics = {**measured(model, data.for_spec(spec), cfg.data.eval_batch_size, torch_device), "seconds": time.time() - t0, **result.metrics}
        variants = {name: replace(v, metrics={**measured(v.model, data.for_spec(v.spec), cfg.data.eval_batch_size, torch_device), **v.metrics})
                    for name, v in result.variants.items()}
        stage_info = {"index": i, "type": stage.config.type, "label": stage.label, "hash": hashes[i]}
        on_main(group, lambda: save_stage(folders, i, model, spec, metrics, stage_info, variants, result.files))
        records.append({**stage_info, "status": "ran", "metrics": metrics,
                        "variants": [{"name": n, "model": v.spec.model_dump(mode="json"), "metrics": v.metrics}
                                     for n, v in variants.items()]})

    if not group.is_main:
        return None

    test_data = data.for_spec(spec).test
    test = evaluate(model, test_data, cfg.data.eval_batch_size, torch_device) if test_data is not None else None
    asked = exported_variants(cfg.export.variants, records, pipeline.path)
    loaded = {name: (name, *load_model_dir(folders[i] / VARIANTS / name)[:2])
              for i, name in dict.fromkeys(asked + [item for t in targets for item in chosen_variants(records, t.name)])}
    families = {t.name: [(None, model, spec)] + [loaded[name] for _, name in dict.fromkeys(asked + chosen_variants(records, t.name))]
                for t in targets}
    say(f"export and validation: {sum(map(len, families.values()))} model(s) over {len(targets)} target(s)", quiet)
    artifacts, deployments = export_for_targets(families, data, cfg.export, targets, run_dir / "artifacts", cfg.data.eval_batch_size)
    report = build_report(pipeline, targets, run_dir, data, spec, records, artifacts, deployments, test,
                          seconds=time.time() - started, device=str(torch_device))
    write_report(run_dir, report)
    if (run_dir / "artifacts").is_dir():
        write_manifest(run_dir / "artifacts", deployments)
    if not quiet:
        print_summary(report)
    missing = [name for name, deploy in deployments.items() if deploy is None]
    if missing:
        reasons = "; ".join(f"{a.target}/{a.variant or 'primary'}/{a.format}: {a.reason}" for a in artifacts
                            if a.reason and a.target in missing and a.status != "bundle")
        raise ExportError(f"no deployable artifact for {', '.join(missing)} ({reasons}); details in {run_dir / 'report.json'}")
    return report


def check_model_runs(model, spec, data) -> None:
    """The model takes the data's images and predicts its classes, before anything trains."""
    x = data.val.x[:2].to(next(model.parameters()).device)
    try:
        with evaluating(model):
            out = model(x)
    except Exception as e:  # a model that cannot take these inputs fails in its own way
        raise ModelError(f"model {shown(spec.arch)} cannot run on the data's images of shape {tuple(data.input_shape)} "
                         f"(C, H, W): {described(e)}") from None
    if tuple(out.shape) != (len(x), spec.num_classes):
        raise ModelError(f"model {shown(spec.arch)} outputs shape {tuple(out.shape)} for a batch of {len(x)}, not ({len(x)}, "
                         f"{spec.num_classes}): it must return one logit per class")


def measured(model, data, batch_size: int, device) -> dict:
    """What the report says of every model that leaves a stage: size, cost and validation accuracy."""
    val = evaluate(model, data.val, batch_size, device)
    return {**model_metrics(model, data.input_shape), "val_accuracy": val["accuracy"], "val_loss": val["loss"]}


def check_variant_names(variants: dict, records: list[dict], label: str) -> None:
    """A variant name becomes a folder name: safe, not `primary`, and unique across the run's stages."""
    earlier = {v["name"]: r["label"] for r in records for v in r.get("variants", [])}
    for name in variants:
        try:
            safe_name(name)
        except ValueError as e:
            raise ConfigError(f"stage {label!r}: variant name {e}") from None
        if name == "primary" or name.startswith("tensorrt-"):
            raise ConfigError(f"stage {label!r}: variant name {name!r} is reserved")
        if name in earlier:
            raise ConfigError(f"stage {label!r}: variant {name!r} was already produced by stage {earlier[name]!r}; "
                              f"variant names must be unique in a run")


def exported_variants(choice, records: list[dict], path: Path) -> list[tuple[int, str]]:
    """(stage index, name) of each variant `export.variants` asks for: none, all, or the ones named."""
    produced = [(r["index"], v["name"]) for r in records for v in r.get("variants", [])]
    if choice == "primary":
        return []
    if choice == "all":
        return produced
    names = [name for _, name in produced]
    unknown = [name for name in choice if name not in names]
    if unknown:
        raise ConfigError(f"{path}: export.variants: {unknown[0]!r} is not a variant of this run; the variants are: "
                          f"{', '.join(names) or '(none: no stage produced any)'}")
    return [item for item in produced if item[1] in choice]


def chosen_variants(records: list[dict], target: str) -> list[tuple[int, str]]:
    """(stage index, name) of the variants a stage chose for `target` (their metrics' `chosen_for` names it): they
    are exported for that target whatever `export.variants` says."""
    return [(r["index"], v["name"]) for r in records for v in r.get("variants", [])
            if target in (v.get("metrics") or {}).get("chosen_for", [])]


def resumed_record(folder: Path) -> dict:
    """The report record of a reused stage folder, after verifying it and its variants against their checksums."""
    meta = verify_model_dir(folder)
    variants = []
    for name in meta.variants:
        variant = read_spec(folder / VARIANTS / name)
        variants.append({"name": name, "model": variant.model, "metrics": read_metrics(folder / VARIANTS / name)})
    return {**meta.stage.model_dump(), "status": "resumed", "metrics": read_metrics(folder), "variants": variants}


def finished_prefix(folders: list[Path], hashes: list[str]) -> int:
    """How many leading stages have a finished folder whose recorded hash matches the current config."""
    done = 0
    for folder, expected in zip(folders, hashes):
        meta = read_spec(folder)
        if not meta or meta.stage is None or meta.stage.hash != expected:
            break
        done += 1
    return done


def save_stage(folders: list[Path], index: int, model, spec, metrics: dict, stage_info: dict, variants: dict,
               files: dict[str, bytes]) -> None:
    """Checkpoint a finished stage (with its variants and own files) and drop the folders of later stages left by an
    earlier config."""
    save_model_dir(folders[index], model, spec, metrics, stage_info, variants, files)
    remove_stale_stages(folders[index].parent.parent, keep=folders[: index + 1])
