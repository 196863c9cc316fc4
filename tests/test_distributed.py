"""torchrun: two CPU processes (gloo) train like one process and only rank 0 writes."""
import json
import os
import subprocess
import sys


from compress.cli import main
from conftest import tiny_pipeline

STAGES = [{"type": "train", "epochs": 2, "lr": 0.05}, {"type": "train", "epochs": 1, "lr": 0.01}]


def torchrun(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", "-m", "compress.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


def test_two_process_run_matches_single_process(write_pipeline, tmp_path):
    path = write_pipeline(tiny_pipeline(stages=STAGES, data={"dataset": "bundled", "limit": 512, "batch_size": 64,
                                                            "calibration_size": 64}))
    single, multi = tmp_path / "single", tmp_path / "ddp"
    assert main([str(path), "--run-dir", str(single), "--quiet"]) == 0
    result = torchrun([str(path), "--run-dir", str(multi), "--quiet"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (json.loads((d / "report.json").read_text()) for d in (single, multi))
    assert [s["status"] for s in two["stages"]] == ["ran", "ran"]
    # each rank sees half of every global batch; BatchNorm statistics differ, so results agree within a tolerance
    for a, b in zip(one["stages"], two["stages"]):
        assert abs(a["metrics"]["val_accuracy"] - b["metrics"]["val_accuracy"]) < 0.08
    assert abs(one["stages"][0]["metrics"]["history"][0]["train_loss"] - two["stages"][0]["metrics"]["history"][0]["train_loss"]) < 0.15
    assert two["artifacts"][0]["parity"]["max_abs_diff"] <= 1e-4
    # files are written once, by rank 0: one folder per stage, no stray temporary files
    assert sorted(p.name for p in (multi / "stages").iterdir()) == ["01-train", "02-train"]
    assert not [p for p in multi.rglob("*") if p.name.startswith(".")]
    assert result.stdout.count("stage") == 0  # --quiet on every rank


def test_resume_under_torchrun(write_pipeline, tmp_path):
    path = write_pipeline(tiny_pipeline(stages=STAGES))
    run_dir = tmp_path / "run"
    assert main([str(path), "--run-dir", str(run_dir), "--quiet"]) == 0
    result = torchrun([str(path), "--run-dir", str(run_dir)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [s["status"] for s in json.loads((run_dir / "report.json").read_text())["stages"]] == ["resumed", "resumed"]
    assert result.stderr.count("resuming") == 1  # only rank 0 speaks
