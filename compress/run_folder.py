"""The run folder is ours alone: a marker says compress made it, an OS lock keeps a second run out while one works in
it, and cleanup deletes only what a run of ours wrote there.

`<run>/.compress/lock` holds the lock and says who holds it (pid, start time, the `TEMP_TAG` of its temporary
names). A folder that is neither empty nor marked is refused, so `--run-dir ~/work` cannot touch a user's files.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator, Optional

from .atomic import TEMP_TAG, is_temporary, writing
from .errors import RunDirError

MARKER = ".compress"
LEGACY_ENTRIES = {"pipeline.resolved.yaml", "stages", "work", "artifacts", "report.json", "report.html"}
STAGE_FOLDER = re.compile(r"^[0-9]{2}-[A-Za-z0-9_]+$")


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` is a run folder of ours (marked, or made by a version before the marker)."""
    if (folder / MARKER).is_dir():
        return True
    entries = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return "pipeline.resolved.yaml" in entries and entries <= LEGACY_ENTRIES | {n for n in entries if n.startswith(".")}


def claim(folder: Path) -> None:
    """Create the run folder, or accept one of ours; refuse a non-empty folder that compress did not make. An OSError
    (an unwritable place) is the caller's to explain."""
    if folder.is_dir() and any(folder.iterdir()) and not is_run_folder(folder):
        names = sorted(p.name for p in folder.iterdir())
        raise RunDirError(
            f"run directory {folder} already holds files that compress did not write ({', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}); compress writes only into an empty folder or one of its own run "
            f"folders, and deletes only what it wrote. Pass another --run-dir (or leave it out for runs/<name>).")
    outer = next((p for p in folder.absolute().parents if (p / MARKER).is_dir()), None)
    if outer is not None:
        raise RunDirError(f"run directory {folder} lies inside the run folder {outer}, whose reruns replace its "
                          f"folders; pass a --run-dir outside it")
    links = [p for p in walk(folder) if p.is_symlink()] if folder.is_dir() else []
    if links:
        raise RunDirError(f"run directory {folder} holds a symbolic link ({links[0]}); compress writes only inside the "
                          f"run folder, so it does not follow links there: replace the link with a folder")
    (folder / MARKER).mkdir(parents=True, exist_ok=True)


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the run folder's exclusive lock (released on any exit, even a kill); a second holder fails at once naming
    the first one's pid. Taking it deletes the temporaries that the previous holder left behind."""
    path = folder / MARKER / "lock"
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(handle)
            who = f"pid {holder.get('pid', '?')}, started {holder.get('started', '?')}" if holder else "another process"
            raise RunDirError(f"run directory {folder} is in use by another compress run ({who}); wait for it to finish, "
                              f"or pass another --run-dir") from None
        previous = read_holder(handle)
        if previous and previous.get("tag") != TEMP_TAG:
            remove_leftovers(folder, str(previous.get("tag", "")))
        with writing(path):
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "tag": TEMP_TAG}))
            handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


@contextmanager
def run_folder(folder: Path) -> Iterator[None]:
    """Claim and lock `folder` for a run (an OSError means the place cannot be written)."""
    claim(folder)
    with locked(folder):
        yield


def locked_if_marked(folder: Path):
    """`locked(folder)` when `folder` is a marked run folder (e.g. `compress profile` on a run's artifacts), else a
    context that does nothing (a device bundle on its own)."""
    return locked(folder) if (folder / MARKER).is_dir() else nullcontext()


def read_holder(handle) -> Optional[dict]:
    """What the lock file says about its (last) holder, or None when it says nothing readable."""
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def remove_leftovers(folder: Path, tag: str) -> None:
    """Delete the temporary files and folders that the process tagged `tag` left in `folder` when it was killed."""
    if not re.fullmatch(r"compress-[0-9]+-[0-9a-f]{8}", tag):
        return  # not a tag of ours: delete nothing
    for root, dirs, files in os.walk(folder):  # symbolic links to folders are not followed
        for name in [*files, *dirs]:
            if is_temporary(name, tag):
                path = Path(root) / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        dirs[:] = [d for d in dirs if not is_temporary(d, tag)]


def walk(folder: Path) -> Iterator[Path]:
    """Every path under `folder`, not following symbolic links."""
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            yield Path(root) / name


def foreign(folder: Path, ours) -> list[str]:
    """Names in `folder` that `ours(name)` does not claim: what a replacement or deletion of it would lose."""
    return sorted(p.name for p in folder.iterdir() if not ours(p.name)) if folder.is_dir() else []


def check_replaceable(folder: Path, ours) -> None:
    """Refuse to replace or delete `folder` when it holds anything compress did not put there."""
    extra = foreign(folder, ours)
    if extra:
        raise RunDirError(f"{folder} holds files compress did not write ({', '.join(extra[:3])}), and this run has to "
                          f"replace it; move them out of the run folder, then run the same command again")


def remove_tree(path: Path, root: Path) -> None:
    """Delete the folder `path`, which must lie inside `root` (a run folder); anything else is refused."""
    resolved, base = path.resolve(), root.resolve()
    if resolved == base or not resolved.is_relative_to(base) or path.is_symlink():
        raise RunDirError(f"refusing to delete {path}: it is not a folder inside {root}")
    shutil.rmtree(path)


def remove_stale_stages(run_dir: Path, keep: list[Path]) -> None:
    """Delete stage folders left by an earlier config (they followed a stage that has just been redone): only
    folders named like a stage folder that hold a stage's spec.json."""
    from .checkpoint import is_model_file

    for folder in (run_dir / "stages").iterdir():
        if folder in keep or not STAGE_FOLDER.match(folder.name) or not (folder / "spec.json").is_file():
            continue
        if foreign(folder, is_model_file) or any(foreign(v, is_model_file) for v in (folder / "variants").glob("*")):
            continue  # it holds the user's files too: left as it is (a stale stage folder is never read)
        with writing(folder):
            remove_tree(folder, run_dir)
