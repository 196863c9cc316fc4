"""Stage checkpoints on disk: spec.json + weights.safetensors + metrics.json, written atomically, verified on load."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .atomic import replace_file, sha256_file, staged_dir, to_json
from .errors import RunDirError
from .models import build_model, load_weights

SPEC, WEIGHTS, METRICS = "spec.json", "weights.safetensors", "metrics.json"


def save_model_dir(folder: Path, model: nn.Module, spec: dict, metrics: dict, info: Optional[dict] = None) -> None:
    """Write a complete model folder under a temporary name, then move it into place in one rename."""
    with staged_dir(folder) as tmp:
        write_model_files(tmp, model, spec, metrics, info)


def write_model_files(folder: Path, model: nn.Module, spec: dict, metrics: dict, info: Optional[dict]) -> None:
    """Weights and metrics first, then spec.json with their checksums: a folder without spec.json is incomplete."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    replace_file(folder / WEIGHTS, safetensors_bytes(state))
    replace_file(folder / METRICS, to_json(metrics))
    files = {name: sha256_file(folder / name) for name in (WEIGHTS, METRICS)}
    replace_file(folder / SPEC, to_json({"model": spec, **(info or {}), "files": files}))


def read_spec(folder: Path) -> Optional[dict]:
    """The spec.json of a finished model folder, or None when the folder is missing or incomplete."""
    try:
        meta = json.loads((folder / SPEC).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{folder / SPEC}: corrupt ({e}); delete {folder} or rerun with --no-resume") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict) or not isinstance(meta.get("files"), dict):
        raise RunDirError(f"{folder / SPEC}: corrupt (expected an object with 'model' and 'files', the checksums of the "
                          f"folder's files); delete {folder} or rerun with --no-resume")
    return meta


def read_metrics(folder: Path) -> dict:
    """The metrics.json of a finished model folder."""
    try:
        return json.loads((folder / METRICS).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{folder / METRICS}: missing or corrupt ({e}); delete {folder} or rerun with --no-resume") from None


def verify_model_dir(folder: Path) -> dict:
    """The spec.json of a finished model folder, after checking every file against its recorded checksum."""
    meta = read_spec(folder)
    if meta is None:
        raise RunDirError(f"{folder}: not a finished checkpoint (no {SPEC})")
    files = meta["files"]
    for name in sorted({WEIGHTS, METRICS} | files.keys()):
        path = folder / name
        if Path(name).name != name or not path.is_file() or sha256_file(path) != files.get(name):
            raise RunDirError(f"{path}: missing or corrupt (checksum differs from {SPEC}); delete {folder} or rerun with --no-resume")
    return meta


def load_model_dir(folder: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict, dict]:
    """Rebuild (model, spec, metrics) from a folder after checking every file against its recorded checksum."""
    meta = verify_model_dir(folder)
    model = load_weights(build_model(meta["model"]), folder / WEIGHTS).to(device)
    return model, meta["model"], read_metrics(folder)
