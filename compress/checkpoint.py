"""Stage checkpoints on disk: spec.json + weights.safetensors + metrics.json, written atomically, verified on load."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .errors import RunDirError
from .models import build_model, load_weights

SPEC, WEIGHTS, METRICS = "spec.json", "weights.safetensors", "metrics.json"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = current_umask()


@contextmanager
def writing(path: Path):
    """Turn an OSError while writing `path` (disk full, read-only or unwritable folder) into a RunDirError."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            problem = "the disk is full (no space left on device)"
            fix = (f"free space on the disk that holds {path.parent} (e.g. delete old run folders or their work/ caches) "
                   f"or pass another --run-dir")
        elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            problem, fix = f"the folder is read-only or not writable ({e.strerror})", "make it writable or pass another --run-dir"
        elif e.errno in (errno.EEXIST, errno.ENOTDIR):
            problem, fix = "a file stands where a folder of its path should be", "move that file or pass another --run-dir"
        else:
            problem, fix = e.strerror or str(e), "fix the cause or pass another --run-dir"
        raise RunDirError(f"cannot write {path}: {problem}. Files already written are unchanged and finished stages are "
                          f"kept; {fix}, then run the same command again to resume after the last finished stage.") from None


@contextmanager
def staged(path: Path):
    """Yield a temporary path beside `path` for a writer that needs a file name; rename it to `path` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(path):
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, fsync, then rename over it."""
    with writing(path):
        replace_file(path, data)


def replace_file(path: Path, data: bytes) -> None:
    """`atomic_write` without turning an OSError into a RunDirError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_leftovers(run_dir: Path) -> None:
    """Delete the temporary files and folders ('.NAME.*.tmp', '.NAME.old') that a killed run left in `run_dir`."""
    for path in [*run_dir.rglob(".*.tmp"), *run_dir.rglob(".*.old")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def to_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model_dir(folder: Path, model: nn.Module, spec: dict, metrics: dict, info: Optional[dict] = None) -> None:
    """Write a complete model folder under a temporary name, then move it into place in one rename."""
    with writing(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
        try:
            os.chmod(tmp, 0o777 & ~UMASK)
            write_model_files(tmp, model, spec, metrics, info)
            if folder.exists():
                stale = folder.with_name(f".{folder.name}.old")
                shutil.rmtree(stale, ignore_errors=True)
                os.replace(folder, stale)
                os.replace(tmp, folder)
                shutil.rmtree(stale, ignore_errors=True)
            else:
                os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


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


def load_model_dir(folder: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict, dict]:
    """Rebuild (model, spec, metrics) from a folder after checking every file against its recorded checksum."""
    meta = read_spec(folder)
    if meta is None:
        raise RunDirError(f"{folder}: not a finished checkpoint (no {SPEC})")
    files = meta["files"]
    for name in sorted({WEIGHTS, METRICS} | files.keys()):
        path = folder / name
        if not path.is_file() or sha256_file(path) != files.get(name):
            raise RunDirError(f"{path}: missing or corrupt (checksum differs from {SPEC}); delete {folder} or rerun with --no-resume")
    model = load_weights(build_model(meta["model"]), folder / WEIGHTS).to(device)
    return model, meta["model"], read_metrics(folder)
