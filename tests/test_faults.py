"""Faults: SIGKILL at random moments, a full disk, a read-only run directory, Ctrl-C. Finished work must survive each."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from compress.atomic import sha256_file
from compress.checkpoint import load_model_dir
from compress.cli import main
from compress.run_folder import MARKER
from conftest import tiny_pipeline

STAGES = [{"type": "train", "name": name, "epochs": 1, "lr": lr} for name, lr in (("a", 0.05), ("b", 0.02), ("c", 0.01))]
STAGE_FILES = {"spec.json", "weights.safetensors", "metrics.json"}
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # on 2 shared cores, more threads only wait for each other


@pytest.fixture(autouse=True)
def one_thread():
    """Run in-process pipelines on one thread too, for the same reason as CHILD_ENV."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(path, run_dir) -> int:
    return main([str(path), "--run-dir", str(run_dir), "--quiet"])


def launch(path, run_dir, **kwargs) -> subprocess.Popen:
    """The CLI in a child process, as a user starts it."""
    return subprocess.Popen([sys.executable, "-m", "compress.cli", str(path), "--run-dir", str(run_dir), "--quiet"],
                            env=CHILD_ENV, stdout=subprocess.DEVNULL, **kwargs)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> bool:
    """Poll until `path` exists (True) or the process has exited (False)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.01)
    return True


def statuses(run_dir: Path) -> list[str]:
    return [s["status"] for s in json.loads((run_dir / "report.json").read_text())["stages"]]


def finished_stages(run_dir: Path) -> dict[str, tuple]:
    """Every stage folder verified against its checksums: name -> (weights checksum, inode, mtime) of its weights."""
    finished = {}
    for folder in sorted((run_dir / "stages").iterdir()) if (run_dir / "stages").is_dir() else []:
        if folder.name.startswith("."):
            continue  # a killed run's temporary folder: never read as a result
        load_model_dir(folder)
        assert {p.name for p in folder.iterdir()} == STAGE_FILES
        weights = (folder / "weights.safetensors").stat()
        checksum = json.loads((folder / "spec.json").read_text())["files"]["weights.safetensors"]
        finished[folder.name] = (checksum, weights.st_ino, weights.st_mtime_ns)
    return finished


def check_complete_run(run_dir: Path) -> None:
    """Every file of a finished run verifies, and nothing else (no temporary leftovers) is there."""
    report = json.loads((run_dir / "report.json").read_text())
    artifacts = {a["path"]: a["sha256"] for a in report["artifacts"]}
    assert sorted(finished_stages(run_dir)) == [f"{i + 1:02d}-train" for i in range(len(STAGES))]
    for path in run_dir.rglob("*"):
        relative = path.relative_to(run_dir)
        if relative.parts[0] == MARKER:
            continue  # the run folder's own marker and lock
        assert not any(part.startswith(".") for part in relative.parts), f"leftover temporary file {relative}"
        if path.is_dir() or relative.parts[0] == "stages":
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
        elif path.suffix == ".html":
            assert path.read_text().rstrip().endswith("</html>"), f"{relative} is truncated"
        else:
            assert artifacts.pop(str(path), None) == sha256_file(path), f"{relative}: not an artifact of report.json"
    assert not artifacts, f"artifacts in report.json but not on disk: {artifacts}"


def milestones(run_dir: Path) -> list[Path]:
    """What appears, in order, as a run goes: the resolved config (run folder ready), each stage folder, the report."""
    stages = [run_dir / "stages" / f"{i + 1:02d}-train" for i in range(len(STAGES))]
    return [run_dir / "pipeline.resolved.yaml", *stages, run_dir / "report.json"]


def test_sigkill_at_random_moments_then_rerun(write_pipeline, tmp_path):
    """Two runs killed at seeded random moments in each phase of a run (before stage 1's checkpoint, between
    checkpoints, during export); each rerun finishes, reuses what was finished and leaves only verified files."""
    path = write_pipeline(tiny_pipeline(stages=STAGES))
    proc, times = launch(path, tmp_path / "timing"), []
    for milestone in milestones(tmp_path / "timing"):
        assert wait_for(milestone, proc)
        times.append(time.monotonic())
    assert proc.wait(timeout=180) == 0
    phases = [b - a for a, b in zip(times, times[1:])]  # measured once: how long each phase lasts
    rng = random.Random(0)
    for trial in range(2 * len(phases)):
        run_dir, phase = tmp_path / f"trial{trial}", trial % len(phases)
        proc = launch(path, run_dir)
        where = f"trial {trial} (killed in phase {phase})"
        if wait_for(milestones(run_dir)[phase], proc):
            time.sleep(rng.random() * phases[phase])
            proc.send_signal(signal.SIGKILL)
        else:
            assert proc.returncode == 0, f"{where}: the run failed before the kill"
        proc.wait(timeout=180)
        before = finished_stages(run_dir)
        assert list(before) == [f"{i + 1:02d}-train" for i in range(len(before))] and len(before) >= phase, where
        assert run(path, run_dir) == 0, where
        assert statuses(run_dir) == ["resumed"] * len(before) + ["ran"] * (len(STAGES) - len(before)), where
        after = finished_stages(run_dir)
        assert {name: after[name] for name in before} == before, f"{where}: a finished stage was rewritten"
        check_complete_run(run_dir)


def fill_disk(monkeypatch, file_name: str) -> None:
    """Make the write of any file called `file_name` stop half-way with ENOSPC, as on a full disk."""
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        return FullDisk(f) if f".{file_name}." in os.readlink(f"/proc/self/fd/{fd}") else f

    monkeypatch.setattr(os, "fdopen", fdopen)


def snapshot(run_dir: Path) -> dict[str, str]:
    """Checksum of every file under `run_dir` but the lock's holder record, by relative path."""
    return {str(p.relative_to(run_dir)): sha256_file(p) for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.relative_to(run_dir).parts[0] != MARKER}


def test_disk_full_during_a_checkpoint_write(write_pipeline, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    assert run(write_pipeline(tiny_pipeline(stages=STAGES[:2])), run_dir) == 0
    before = snapshot(run_dir)
    changed = write_pipeline(tiny_pipeline(stages=[STAGES[0], {**STAGES[1], "lr": 0.03}]), "changed.yaml")
    fill_disk(monkeypatch, "weights.safetensors")
    assert run(changed, run_dir) == 2  # stage 1 resumed, stage 2 reran; its checkpoint hits the full disk
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {run_dir / 'stages' / '02-train'}: ") and "Traceback" not in err
    for words in ("the disk is full", "free space", "delete old run folders", "finished stages are kept",
                  "run the same command again"):
        assert words in err
    after = snapshot(run_dir)
    assert after.pop("pipeline.resolved.yaml") != before.pop("pipeline.resolved.yaml")  # rewritten at the start
    assert after == before  # both stage folders, the report and the artifacts unchanged; no temporary files
    monkeypatch.undo()
    assert run(changed, run_dir) == 0
    assert statuses(run_dir) == ["resumed", "ran"]


def read_only(monkeypatch, root: Path) -> None:
    """Refuse to create files and folders under `root` with EROFS (tests run as root, so chmod would not stop writes)."""
    for name in ("mkstemp", "mkdtemp"):
        real = getattr(tempfile, name)

        def refuse(*args, real=real, **kwargs):
            if Path(kwargs.get("dir", "")).is_relative_to(root):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return real(*args, **kwargs)

        monkeypatch.setattr(tempfile, name, refuse)


def test_read_only_run_directory(write_pipeline, tmp_path, monkeypatch, capsys):
    run_dir, path = tmp_path / "run", write_pipeline(tiny_pipeline(stages=STAGES[:1]))
    assert run(path, run_dir) == 0
    before = snapshot(run_dir)
    read_only(monkeypatch, run_dir)
    assert run(path, run_dir) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {run_dir}") and "Traceback" not in err
    assert "read-only" in err and "--run-dir" in err
    assert snapshot(run_dir) == before
    monkeypatch.undo()
    assert run(path, run_dir) == 0 and statuses(run_dir) == ["resumed"]


def test_sigint_stops_cleanly_and_the_rerun_resumes(write_pipeline, tmp_path):
    run_dir = tmp_path / "run"
    stages = [STAGES[0], {**STAGES[1], "epochs": 10}, STAGES[2]]  # a stage 2 long enough to interrupt
    path = write_pipeline(tiny_pipeline(stages=stages))
    # a shell that starts jobs in the background (CI scripts, nohup) hands them SIGINT ignored; a terminal does not
    proc = launch(path, run_dir, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert wait_for(run_dir / "stages" / "01-train" / "spec.json", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the same command again to resume" in err and "Traceback" not in err
    stage1 = finished_stages(run_dir)
    assert list(stage1) == ["01-train"]  # stage 2 was stopped before its checkpoint
    assert run(path, run_dir) == 0
    assert statuses(run_dir) == ["resumed", "ran", "ran"]
    assert finished_stages(run_dir)["01-train"] == stage1["01-train"]
