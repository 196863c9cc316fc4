import json
import os
import signal
import subprocess
import sys
import time


from compress.checkpoint import load_model_dir
from compress.cli import main
from conftest import tiny_pipeline

TWO_STAGES = [{"type": "train", "name": "train", "epochs": 1, "lr": 0.05},
              {"type": "train", "name": "finetune", "epochs": 1, "lr": 0.01}]


def run(path, run_dir, *extra):
    return main([str(path), "--run-dir", str(run_dir), "--quiet", *extra])


def report(run_dir):
    return json.loads((run_dir / "report.json").read_text())


def test_end_to_end_run_writes_checkpoints_artifacts_and_report(write_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(write_pipeline(tiny_pipeline(stages=TWO_STAGES)), run_dir) == 0
    r = report(run_dir)
    assert [s["status"] for s in r["stages"]] == ["ran", "ran"]
    assert r["target"]["name"] == "x86-avx2" and r["versions"]["torch"] and len(r["config_hash"]) == 64
    for name in ("01-train", "02-train"):
        assert {p.name for p in (run_dir / "stages" / name).iterdir()} == {"spec.json", "weights.safetensors", "metrics.json"}
    metrics = r["stages"][1]["metrics"]
    assert metrics["params"] > 0 and metrics["macs"] > 0 and 0 <= metrics["val_accuracy"] <= 1
    (artifact,) = r["artifacts"]
    assert artifact["format"] == "onnx" and artifact["parity"]["max_abs_diff"] <= 1e-4
    assert artifact["parity"]["top1_agreement"] == 1.0 and artifact["latency_ms"]["1"] > 0
    assert abs(artifact["accuracy"] - metrics["val_accuracy"]) < 1e-6 and artifact["estimated_latency_ms"] > 0
    assert r["deploy"]["path"] == artifact["path"] and os.path.isfile(artifact["path"])
    assert (run_dir / "pipeline.resolved.yaml").is_file()
    assert capsys.readouterr().out == ""  # --quiet


def test_resume_reuses_finished_stages_and_reruns_changed_ones(write_pipeline, tmp_path):
    run_dir = tmp_path / "run"
    path = write_pipeline(tiny_pipeline(stages=TWO_STAGES))
    run(path, run_dir)
    first = (run_dir / "stages" / "01-train" / "weights.safetensors").stat().st_mtime_ns
    run(path, run_dir)
    assert [s["status"] for s in report(run_dir)["stages"]] == ["resumed", "resumed"]
    changed = [TWO_STAGES[0], {**TWO_STAGES[1], "lr": 0.02}]
    run(write_pipeline(tiny_pipeline(stages=changed)), run_dir)
    assert [s["status"] for s in report(run_dir)["stages"]] == ["resumed", "ran"]
    assert (run_dir / "stages" / "01-train" / "weights.safetensors").stat().st_mtime_ns == first
    run(path, run_dir, "--no-resume")
    assert [s["status"] for s in report(run_dir)["stages"]] == ["ran", "ran"]


def test_shorter_pipeline_removes_stale_stage_folders(write_pipeline, tmp_path):
    run_dir = tmp_path / "run"
    run(write_pipeline(tiny_pipeline(stages=TWO_STAGES)), run_dir)
    run(write_pipeline(tiny_pipeline(stages=[{**TWO_STAGES[0], "lr": 0.03}])), run_dir)
    assert [p.name for p in (run_dir / "stages").iterdir()] == ["01-train"]


def test_failed_stage_keeps_earlier_results(write_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    bad = [TWO_STAGES[0], {"type": "train", "epochs": 1, "lr": 1e12, "momentum": 0.0}]
    assert run(write_pipeline(tiny_pipeline(stages=bad)), run_dir) == 2
    err = capsys.readouterr().err
    assert "loss became" in err and "Traceback" not in err
    load_model_dir(run_dir / "stages" / "01-train")  # intact and verified
    assert not (run_dir / "stages" / "02-train").exists()
    assert run(write_pipeline(tiny_pipeline(stages=TWO_STAGES)), run_dir) == 0
    assert [s["status"] for s in report(run_dir)["stages"]] == ["resumed", "ran"]


def test_corrupt_checkpoint_is_reported_not_used(write_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    path = write_pipeline(tiny_pipeline())
    run(path, run_dir)
    weights = run_dir / "stages" / "01-train" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    assert run(path, run_dir) == 2
    assert "corrupt (checksum differs" in capsys.readouterr().err


def test_kill_during_second_stage_then_resume(write_pipeline, tmp_path):
    run_dir = tmp_path / "run"
    slow = [TWO_STAGES[0], {"type": "train", "epochs": 50, "lr": 0.01}]
    path = write_pipeline(tiny_pipeline(stages=slow))
    proc = subprocess.Popen([sys.executable, "-m", "compress.cli", str(path), "--run-dir", str(run_dir), "--quiet"])
    deadline = time.time() + 120
    while not (run_dir / "stages" / "01-train" / "spec.json").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    time.sleep(0.5)  # inside stage 2 now
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = load_model_dir(run_dir / "stages" / "01-train")[2]
    assert run(write_pipeline(tiny_pipeline(stages=[slow[0], {**slow[1], "epochs": 1}])), run_dir) == 0
    stages = report(run_dir)["stages"]
    assert [s["status"] for s in stages] == ["resumed", "ran"] and stages[0]["metrics"] == first


def test_runs_are_reproducible_from_the_seed(write_pipeline, tmp_path):
    path = write_pipeline(tiny_pipeline())
    digests = []
    for name in ("a", "b"):
        run(path, tmp_path / name)
        digests.append(json.loads((tmp_path / name / "stages" / "01-train" / "spec.json").read_text())["files"]["weights.safetensors"])
    assert digests[0] == digests[1]
    run(write_pipeline(tiny_pipeline(seed=1), "seed1.yaml"), tmp_path / "c")
    assert json.loads((tmp_path / "c" / "stages" / "01-train" / "spec.json").read_text())["files"]["weights.safetensors"] != digests[0]


def test_an_impossible_setting_in_a_later_stage_fails_before_the_first_one_trains(write_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    stages = [*TWO_STAGES, {"type": "prune", "include": ["blocks.*"]}]
    assert run(write_pipeline(tiny_pipeline(stages=stages)), run_dir) == 2
    err = capsys.readouterr().err
    assert "stage 'prune': include[0] 'blocks.*' matches no conv or linear layer" in err and "Traceback" not in err
    assert not (run_dir / "stages" / "01-train").exists()
