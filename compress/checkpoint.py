"""Model folders on disk: spec.json + weights.safetensors + metrics.json, and `variants/<name>/` folders of the same
shape for the other models of a stage's family. Written atomically as one folder, verified against checksums on
load, rebuilt from the typed spec without pickle."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import torch
from pydantic import Field, ValidationError
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .atomic import replace_file, sha256_file, staged_dir, to_json
from .config import Name, Natural, Strict, error_lines
from .errors import RunDirError
from .models import ModelSpec, build_model, load_weights
from .run_folder import check_replaceable

SPEC, WEIGHTS, METRICS, VARIANTS = "spec.json", "weights.safetensors", "metrics.json", "variants"
SHA256 = re.compile(r"[0-9a-f]{64}")
AUX = re.compile(r"aux-[a-z0-9_-]{1,64}\.(json|safetensors)")  # a stage's other files (e.g. a trained generator)


class StageInfo(Strict):
    """Which stage of which config wrote a stage folder (its hash decides whether a run may reuse it)."""

    index: Natural
    type: str
    label: str
    hash: str


class FolderMeta(Strict):
    """The schema of spec.json."""

    model: dict = Field(description="the model's spec (models/spec.py), checked by ModelSpec.from_json")
    stage: Optional[StageInfo] = None
    files: dict[str, str] = Field(description="SHA-256 of each file of the folder")
    variants: dict[Name, str] = Field(default_factory=dict, description="SHA-256 of each variant's spec.json")


def is_model_file(name: str) -> bool:
    """Whether a name in a model folder is one compress writes there."""
    return name in (SPEC, WEIGHTS, METRICS, VARIANTS) or bool(AUX.fullmatch(name))


def save_model_dir(folder: Path, model: nn.Module, spec: ModelSpec, metrics: dict, stage: Optional[dict] = None,
                   variants: Optional[dict] = None, files: Optional[dict[str, bytes]] = None) -> None:
    """Write a complete model folder (its `variants`: name -> Variant, and `files`: `aux-*` name -> bytes) under a
    temporary name, then move it into place in one rename; an older folder there is replaced only when it holds
    nothing but a model folder's files."""
    bad = [name for name in files or {} if not AUX.fullmatch(name)]
    if bad:
        raise ValueError(f"a stage's own files are named aux-NAME.json or aux-NAME.safetensors, not {bad[0]!r}")
    check_replaceable(folder, is_model_file)
    variants_dir = folder / VARIANTS
    check_replaceable(variants_dir, lambda name: (variants_dir / name).is_dir())
    for old in variants_dir.iterdir() if variants_dir.is_dir() else []:
        check_replaceable(old, is_model_file)
    with staged_dir(folder) as tmp:
        written = {}
        for name, variant in (variants or {}).items():
            write_model_files(tmp / VARIANTS / name, variant.model, variant.spec, variant.metrics)
            written[name] = sha256_file(tmp / VARIANTS / name / SPEC)
        write_model_files(tmp, model, spec, metrics, {"stage": stage} if stage else {}, written, files)


def write_model_files(folder: Path, model: nn.Module, spec: ModelSpec, metrics: dict, info: Optional[dict] = None,
                      variants: Optional[dict[str, str]] = None, extra: Optional[dict[str, bytes]] = None) -> None:
    """Weights, metrics and `extra` files first, then spec.json with their checksums: a folder without spec.json is
    incomplete."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    replace_file(folder / WEIGHTS, safetensors_bytes(state))
    replace_file(folder / METRICS, to_json(metrics))
    for name, data in (extra or {}).items():
        replace_file(folder / name, data)
    files = {name: sha256_file(folder / name) for name in (WEIGHTS, METRICS, *(extra or {}))}
    meta = {"model": spec.model_dump(mode="json"), **(info or {}), "files": files}
    replace_file(folder / SPEC, to_json({**meta, "variants": variants} if variants else meta))


def read_aux(folder: Path, name: str) -> bytes:
    """A stage's own file `name` from a finished model folder, checked against the checksum spec.json records."""
    meta = read_spec(folder)
    path = folder / name
    if meta is None or name not in meta.files:
        raise RunDirError(f"{folder}: no {name} recorded in {SPEC}")
    if not path.is_file() or sha256_file(path) != meta.files[name]:
        raise RunDirError(f"{path}: missing or corrupt (checksum differs from {SPEC}); delete {folder} or rerun with --no-resume")
    return path.read_bytes()


def corrupt(folder: Path, problem: str) -> RunDirError:
    return RunDirError(f"{folder / SPEC}: corrupt ({problem}); delete {folder} or rerun with --no-resume")


def read_spec(folder: Path) -> Optional[FolderMeta]:
    """The spec.json of a finished model folder, validated, or None when the folder is missing or incomplete."""
    try:
        raw = json.loads((folder / SPEC).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise corrupt(folder, str(e)) from None
    if not isinstance(raw, dict) or not {"model", "files"} <= raw.keys():
        raise corrupt(folder, "expected an object with 'model' and 'files', the checksums of the folder's files")
    try:
        return FolderMeta.model_validate(raw)
    except ValidationError as e:
        raise corrupt(folder, "; ".join(error_lines(e))) from None


def read_metrics(folder: Path) -> dict:
    """The metrics.json of a finished model folder."""
    try:
        return json.loads((folder / METRICS).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{folder / METRICS}: missing or corrupt ({e}); delete {folder} or rerun with --no-resume") from None


def model_spec(folder: Path, meta: FolderMeta) -> ModelSpec:
    """The typed spec of a model folder (version 1 folders are read too)."""
    try:
        return ModelSpec.from_json(meta.model)
    except ValueError as e:
        raise corrupt(folder, f"model: {e}") from None


def verify_model_dir(folder: Path) -> FolderMeta:
    """The spec.json of a finished model folder, after checking every file, and every variant folder, against the
    checksums it records."""
    meta = read_spec(folder)
    if meta is None:
        raise RunDirError(f"{folder}: not a finished checkpoint (no {SPEC})")
    for name in sorted({WEIGHTS, METRICS} | meta.files.keys()):
        path = folder / name
        if Path(name).name != name or not path.is_file() or sha256_file(path) != meta.files.get(name):
            raise RunDirError(f"{path}: missing or corrupt (checksum differs from {SPEC}); delete {folder} or rerun with --no-resume")
    for name, checksum in meta.variants.items():
        variant = folder / VARIANTS / name
        if not (variant / SPEC).is_file() or sha256_file(variant / SPEC) != checksum:
            raise RunDirError(f"{variant / SPEC}: missing or corrupt (checksum differs from {folder / SPEC}); delete "
                              f"{folder} or rerun with --no-resume")
        verify_model_dir(variant)
    model_spec(folder, meta)
    return meta


def load_model_dir(folder: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelSpec, dict]:
    """Rebuild (model, spec, metrics) from a folder after checking every file against its recorded checksum."""
    meta = verify_model_dir(folder)
    spec = model_spec(folder, meta)
    model = load_weights(build_model(spec), folder / WEIGHTS).to(device)
    return model, spec, read_metrics(folder)
