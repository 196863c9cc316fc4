"""The run loop: validate, resolve the target, run or resume stages with atomic checkpoints, export, report."""
from __future__ import annotations

import random
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml

from .atomic import atomic_write
from .checkpoint import load_model_dir, read_metrics, read_spec, save_model_dir, verify_model_dir
from .config import problems_message
from .pipeline_file import Pipeline, load_pipeline
from .distributed import Distributed, init_from_env, on_main, shutdown
from .context import RunContext, say
from .data import load_data
from .errors import ConfigError, ExportError, RunDirError
from .metrics import model_metrics
from .models import build_model, load_weights, make_spec
from .report import build_report, print_summary, write_report
from .run_folder import remove_stale_stages, run_folder
from .stages.base import stage_label
from .training import evaluate


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


def check_export_config(pipeline: Pipeline, target) -> None:
    """Export settings that can only be checked against the registries and the target."""
    from .export import EXPORTERS
    from .export.runner import default_formats

    problems = []
    for i, fmt in enumerate(pipeline.config.export.formats or []):
        if fmt not in EXPORTERS:
            problems.append(f"export.formats[{i}]: {EXPORTERS.miss_message(fmt)}")
    files = [EXPORTERS.get(f) for f in pipeline.config.export.formats or default_formats(target) if f in EXPORTERS]
    files = [cls for cls in files if not cls.packages]
    if files and not any(cls.precision in target.precisions for cls in files):
        problems.append(f"export.formats: no format asked for can be deployed on target {target.name}, which runs "
                        f"{', '.join(target.precisions)}; ask for one in those precisions (e.g. onnx-int8 for int8)")
    opset = pipeline.config.export.opset
    if opset is not None and opset > target.max_opset:
        problems.append(f"export.opset: {opset} is above target {target.name}'s maximum opset {target.max_opset}")
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


def run_pipeline(path: str | Path, target: Optional[str] = None, run_dir: Optional[str | Path] = None,
                 resume: bool = True, quiet: bool = False, device: str = "cpu") -> dict:
    """Run a pipeline file end to end and return its report (also written to <run_dir>/report.json).

    Under torchrun (WORLD_SIZE > 1) every rank trains its share of each batch; rank 0 writes files and returns the
    report, the other ranks return None.
    """
    from .targets import resolve

    started = time.time()
    pipeline = load_pipeline(path)
    cfg = pipeline.config
    target_name = target or cfg.target
    if not target_name:
        raise ConfigError(f"{path}: no target: set `target:` in the file or pass --target NAME (see `compress targets`)")
    profile = resolve(target_name)
    check_export_config(pipeline, profile)
    torch_device = resolve_device(device)
    group = init_from_env(device)
    try:
        with ExitStack() as hold:
            return execute(pipeline, profile, Path(run_dir) if run_dir else Path("runs") / cfg.name, resume,
                           quiet or not group.is_main, device_for_rank(torch_device, group), group, started, hold)
    finally:
        shutdown(group)


def device_for_rank(device: torch.device, group: Distributed) -> torch.device:
    """Each torchrun process on a GPU machine takes the GPU of its local rank."""
    if device.type != "cuda" or not group.enabled:
        return device
    torch.cuda.set_device(group.local_rank)
    return torch.device("cuda", group.local_rank)


def execute(pipeline: Pipeline, profile, run_dir: Path, resume: bool, quiet: bool, torch_device: torch.device,
            group: Distributed, started: float, hold: ExitStack) -> Optional[dict]:
    """Stages (resumed or run), export, report; under torchrun every rank trains and only rank 0 writes, holding the
    run folder's lock until `hold` closes."""
    from .export.runner import export_and_validate
    from .targets import fingerprint

    cfg = pipeline.config
    on_main(group, lambda: prepare_run_dir(run_dir, hold, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)))

    data = load_data(cfg.data, cfg.seed)
    check_model_fits_data(pipeline, data)
    spec = make_spec(cfg.model.arch, cfg.model.in_channels or data.in_channels, cfg.model.num_classes or data.num_classes, cfg.model.kwargs)
    target_fp = fingerprint(profile)
    hashes = [pipeline.stage_hash(i, target_fp) for i in range(len(pipeline.stages))]
    folders = [stage_folder(run_dir, i, scfg.type) for i, (_, scfg) in enumerate(pipeline.stages)]

    done = finished_prefix(folders, hashes) if resume else 0
    records = []
    if done:
        for i in range(done):  # every reused folder is checked against its checksums, not only the one loaded
            meta = verify_model_dir(folders[i])
            records.append({**meta["stage"], "status": "resumed", "metrics": read_metrics(folders[i])})
        model, spec, _ = load_model_dir(folders[done - 1], torch_device)
        say(f"resuming {run_dir}: reusing finished stage(s) 1-{done} ({', '.join(r['label'] for r in records)})", quiet)
    else:
        seed_everything(cfg.seed)  # initial weights follow the config's seed
        model = build_model(spec)
        if cfg.model.weights:
            load_weights(model, cfg.model.weights)
        model.to(torch_device)

    for i in range(done, len(pipeline.stages)):
        cls, scfg = pipeline.stages[i]
        label = stage_label(scfg)
        seed_everything(cfg.seed + i)
        ctx = RunContext(data=data, data_config=cfg.data, run_dir=run_dir, target=profile, device=torch_device,
                         seed=cfg.seed + i, quiet=quiet, stage_name=label, stage_dir=run_dir / "work" / folders[i].name,
                         dist=group, earlier={stage_label(pipeline.stages[j][1]): folders[j] for j in range(i)})
        say(f"stage {i + 1}/{len(pipeline.stages)}: {label}", quiet)
        t0 = time.time()
        result = cls(scfg).run(model, spec, ctx)
        model, spec = result.model, result.spec or spec
        val = evaluate(model, data.val, cfg.data.eval_batch_size, torch_device)
        metrics = {**model_metrics(model, data.input_shape), "val_accuracy": val["accuracy"], "val_loss": val["loss"],
                   "seconds": time.time() - t0, **result.metrics}
        stage_info = {"index": i, "type": scfg.type, "label": label, "hash": hashes[i]}
        on_main(group, lambda: save_stage(folders, i, model, spec, metrics, stage_info))
        records.append({**stage_info, "status": "ran", "metrics": metrics})

    if not group.is_main:
        return None

    test = evaluate(model, data.test, cfg.data.eval_batch_size, torch_device) if data.test is not None else None
    say("export and validation", quiet)
    artifacts, deploy = export_and_validate(model, spec, data, cfg.export, profile, run_dir / "artifacts", cfg.data.eval_batch_size)
    report = build_report(pipeline, profile, run_dir, data, spec, records, artifacts, deploy, test,
                          seconds=time.time() - started, device=str(torch_device))
    write_report(run_dir, report)
    if not quiet:
        print_summary(report)
    if deploy is None:
        reasons = "; ".join(f"{a.format}: {a.reason}" for a in artifacts if a.reason)
        raise ExportError(f"no deployable artifact for {profile.name} ({reasons}); details in {run_dir / 'report.json'}")
    return report


def finished_prefix(folders: list[Path], hashes: list[str]) -> int:
    """How many leading stages have a finished folder whose recorded hash matches the current config."""
    done = 0
    for folder, expected in zip(folders, hashes):
        meta = read_spec(folder)
        if not meta or meta.get("stage", {}).get("hash") != expected:
            break
        done += 1
    return done


def save_stage(folders: list[Path], index: int, model, spec: dict, metrics: dict, stage_info: dict) -> None:
    """Checkpoint a finished stage and drop the folders of later stages left by an earlier config."""
    save_model_dir(folders[index], model, spec, metrics, {"stage": stage_info})
    remove_stale_stages(folders[index].parent.parent, keep=folders[: index + 1])
