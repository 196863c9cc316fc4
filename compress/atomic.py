"""Atomic writes: every file and folder is written under a temporary name and renamed into place, so a killed run
never leaves a half-written one. Temporary names carry this process's `TEMP_TAG`; the run folder records it, and the
next run deletes only leftovers bearing a recorded tag (`run_folder.py`)."""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import RunDirError

TEMP_TAG = f"compress-{os.getpid()}-{secrets.token_hex(4)}"  # in the name of every temporary this process makes


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = current_umask()


def temp_name(path: Path, kind: str = "tmp") -> Path:
    """The name a temporary (`tmp`) or replaced (`old`) copy of `path` has while this process writes it."""
    return path.with_name(f".{path.name}.{TEMP_TAG}.{kind}")


def is_temporary(name: str, tag: str) -> bool:
    """Whether a file name is one of the temporaries that the process tagged `tag` made."""
    return name.startswith(".") and f".{tag}." in name and name.endswith((".tmp", ".old"))


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
def staged(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that needs a file name; rename it to `path` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    with writing(path):
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@contextmanager
def staged_dir(folder: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `folder`; on success it replaces `folder` (an old one is moved aside,
    then deleted), so the folder appears complete or not at all."""
    with writing(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.{TEMP_TAG}.", suffix=".tmp"))
        try:
            os.chmod(tmp, 0o777 & ~UMASK)
            yield tmp
            if folder.exists():
                old = temp_name(folder, "old")
                os.replace(folder, old)
                os.replace(tmp, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, fsync, then rename over it."""
    with writing(path):
        replace_file(path, data)


def replace_file(path: Path, data: bytes) -> None:
    """`atomic_write` without turning an OSError into a RunDirError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{TEMP_TAG}.", suffix=".tmp")
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


def finite(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None, so it is valid strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def to_json(obj: Any) -> bytes:
    """Strict JSON (no NaN or Infinity: those become null), indented, with a final newline."""
    return (json.dumps(finite(obj), indent=2, allow_nan=False, default=str) + "\n").encode()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
