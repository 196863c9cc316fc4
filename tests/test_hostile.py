"""Hostile and careless use beyond the one-command catalogue of test_bad_inputs.py: what a script on the device runs,
what a run deletes, two runs on one folder, leftovers of a killed run, integrity on resume, strict JSON, a dying
measurement process, SIGTERM, and generated pipeline files."""
import json
import math
import os
import signal
import subprocess
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress.atomic import to_json
from compress.cli import main
from compress.errors import CompressError, ExportError
from compress.export import ExportRequest
from compress.export.tensorrt import build_script, comment
from compress.pipeline_file import load_pipeline
from compress.run_folder import remove_leftovers
from compress.targets import resolve
from compress.targets.profiling import check_failures, profile_artifacts
from conftest import tiny_pipeline
from test_faults import launch, wait_for

TWO_STAGES = [{"type": "train", "name": "a", "epochs": 1, "lr": 0.05}, {"type": "train", "name": "b", "epochs": 1, "lr": 0.02}]


def run(path, run_dir, *args) -> int:
    return main([str(path), "--run-dir", str(run_dir), "--quiet", *args])


def test_build_script_quotes_every_value(tiny_data, tmp_path):
    """A plan whose file names hold shell syntax runs as literal arguments; the canary command never runs."""
    request = ExportRequest(model=None, spec={}, data=tiny_data, out_dir=tmp_path, config=None, target=resolve("jetson"))
    hostile = "m$(touch canary-command-ran)`touch canary-command-ran`;touch canary-command-ran"
    plan = [{"precision": "int8", "onnx": f"{hostile}.onnx", "engine": f"{hostile}.engine", "flags": ["--int8"],
             "onnx_sha256": "0" * 64}]
    script = tmp_path / "build_engine.sh"
    script.write_text(build_script(plan, request).replace("sha256sum --quiet -c checksums.sha256", "true"))
    fake = tmp_path / "trtexec"
    fake.write_text('#!/bin/sh\n[ "$1" = --help ] && { echo "TensorRT.v10"; exit 0; }\nprintf "%s\\n" "$@" > args.txt\n')
    fake.chmod(0o755)
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env={**os.environ, "TRTEXEC": str(fake)},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "canary-command-ran").exists()
    assert (tmp_path / "args.txt").read_text().splitlines()[:2] == [f"--onnx={hostile}.onnx", f"--saveEngine={hostile}.engine"]


def test_script_comments_refuse_line_breaks():
    with pytest.raises(ExportError, match="one line"):
        comment("Build for x\ntouch canary-command-ran")


def test_a_run_deletes_only_what_it_wrote(write_pipeline, tmp_path):
    """Files a user keeps in a run folder survive a rerun with a changed, shorter pipeline that drops the stage folders
    it no longer has, and the cleanup of leftovers; names that look like ours but lack our tag included."""
    run_dir = tmp_path / "run"
    assert run(write_pipeline(tiny_pipeline(stages=TWO_STAGES)), run_dir) == 0
    mine = [run_dir / ".notes.tmp", run_dir / "stages" / ".draft.old", run_dir / "stages" / "my-notes" / "a.txt",
            run_dir / "stages" / "07-train" / "readme.txt", run_dir / "artifacts" / ".model.fp32.onnx.compress-1-0000000.tmp"]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("the user's")
    assert run(write_pipeline(tiny_pipeline(stages=[{**TWO_STAGES[0], "lr": 0.03}]), "short.yaml"), run_dir) == 0
    assert not (run_dir / "stages" / "02-train").exists()  # ours, from the longer pipeline: removed
    assert all(p.read_text() == "the user's" for p in mine)


def test_leftovers_of_a_killed_run_are_removed_by_their_tag_only(tmp_path):
    tag = "compress-123-0a1b2c3d"
    ours = [tmp_path / f".weights.safetensors.{tag}.tmp", tmp_path / "stages" / f".01-train.{tag}.x7.tmp",
            tmp_path / "artifacts" / f".tensorrt-jetson.{tag}.old"]
    theirs = [tmp_path / ".weights.safetensors.compress-999-ffffffff.tmp", tmp_path / ".x.tmp", tmp_path / "a.old"]
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if path.name.endswith(".x7.tmp") else path.write_text("x")
    remove_leftovers(tmp_path, tag)
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)
    remove_leftovers(tmp_path, "../../*")  # a lock file edited to name something else deletes nothing
    assert all(p.exists() for p in theirs)


def test_a_second_run_on_the_same_folder_fails_at_once_naming_the_holder(write_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    slow = write_pipeline(tiny_pipeline(stages=[{"type": "train", "epochs": 50, "lr": 0.01}]))
    proc = launch(slow, run_dir)
    try:
        assert wait_for(run_dir / "pipeline.resolved.yaml", proc)
        started = time.monotonic()
        assert run(write_pipeline(tiny_pipeline(), "other.yaml"), run_dir) == 2
        err = capsys.readouterr().err
        assert f"is in use by another compress run (pid {proc.pid}" in err and "--run-dir" in err
        assert time.monotonic() - started < 5
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert run(write_pipeline(tiny_pipeline(), "other.yaml"), run_dir) == 0  # a killed holder's lock is released


@pytest.mark.parametrize("damage", ["weights", "metrics"])
def test_resume_verifies_every_reused_stage(write_pipeline, tmp_path, capsys, damage):
    """Damage to the first of two finished stages is found although only the second one's model is loaded."""
    run_dir, path = tmp_path / "run", write_pipeline(tiny_pipeline(stages=TWO_STAGES))
    assert run(path, run_dir) == 0
    stage = run_dir / "stages" / "01-train"
    if damage == "weights":
        (stage / "weights.safetensors").write_bytes((stage / "weights.safetensors").read_bytes()[:-4] + b"0000")
    else:
        metrics = json.loads((stage / "metrics.json").read_text())
        (stage / "metrics.json").write_text(json.dumps({**metrics, "val_accuracy": 0.99}))
    assert run(path, run_dir) == 2
    err = capsys.readouterr().err
    assert f"{stage}/" in err and "checksum differs from spec.json" in err


def test_report_json_is_strict_json(write_pipeline, tmp_path):
    run_dir = tmp_path / "run"
    assert run(write_pipeline(tiny_pipeline()), run_dir) == 0
    for path in [run_dir / "report.json", *run_dir.glob("stages/*/*.json")]:
        json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path}: {c} is not strict JSON"))
    assert json.loads(to_json({"a": math.nan, "b": [math.inf, 1.5]})) == {"a": None, "b": [None, 1.5]}


def dies_on_int8(path: str, *args) -> dict:
    """A measuring process that is killed (as by the OOM killer) on the INT8 file and measures nothing else."""
    if path.endswith(".int8.onnx"):
        os.kill(os.getpid(), signal.SIGKILL)
    return {"provider": "test", "batches": {"1": {"p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "throughput_per_s": 1e3}}}


def test_profile_survives_a_dying_measuring_process(tmp_path):
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        (tmp_path / name).write_bytes(b"not read by this measure")
    started = time.monotonic()
    profile = profile_artifacts(tmp_path, resolve("host"), [1], runs=1, measure=dies_on_int8)
    assert time.monotonic() - started < 60
    assert [r["file"] for r in profile["results"]] == ["model.fp32.onnx"]
    (failed,) = profile["failed"]
    assert failed["file"] == "model.int8.onnx" and "killed by SIGKILL (out of memory?)" in failed["reason"]
    with pytest.raises(ExportError, match="model.int8.onnx: ONNX Runtime cannot load or run it"):
        check_failures(profile, tmp_path)
    assert json.loads((tmp_path / "profile.json").read_text())["failed"] == [failed]


def test_sigterm_stops_cleanly_and_the_rerun_resumes(write_pipeline, tmp_path):
    run_dir = tmp_path / "run"
    path = write_pipeline(tiny_pipeline(stages=[TWO_STAGES[0], {**TWO_STAGES[1], "epochs": 20}]))
    proc = launch(path, run_dir, stderr=subprocess.PIPE, text=True)
    assert wait_for(run_dir / "stages" / "01-train" / "spec.json", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "terminated (SIGTERM): finished stages are saved" in err and "Traceback" not in err
    assert not list(run_dir.rglob(".*.compress-*")), "temporary files left behind"
    assert run(path, run_dir) == 0
    assert [s["status"] for s in json.loads((run_dir / "report.json").read_text())["stages"]] == ["resumed", "ran"]


# ---- generated pipeline files ---------------------------------------------------------------------------------

KEYS = ["name", "seed", "model", "data", "stages", "export", "target", "type", "epochs", "lr", "arch", "kwargs",
        "batch_size", "limit", "formats", "opset", "method", "teachers", "stage", "schedule", "start", "end"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["train", "prune", "meal", "cnn_s", "tiny", "channel", "x86-cpu", "onnx"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner,
                                                                       max_size=4)), max_leaves=20)


def containers(node) -> list:
    """Every dict and list inside `node`, `node` included."""
    found = [node] if isinstance(node, (dict, list)) else []
    for child in node.values() if isinstance(node, dict) else node if isinstance(node, list) else []:
        found += containers(child)
    return found


def mutated(base: dict, draw) -> dict:
    """The tiny pipeline with a few generated values put at any depth: a key of a mapping set (known keys first) or an
    item of a list replaced."""
    config = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        node = draw(st.sampled_from(containers(config)))
        if isinstance(node, dict):
            node[draw(st.sampled_from(sorted(node)) | st.sampled_from(KEYS) if node else st.sampled_from(KEYS))] = draw(VALUES)
        elif node:
            node[draw(st.integers(0, len(node) - 1))] = draw(VALUES)
    return config


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_generated_pipelines_load_or_fail_with_a_compress_error(data, tmp_path):
    base = tiny_pipeline(stages=[{"type": "train", "epochs": 1},
                                 {"type": "prune", "method": "channel", "target_macs": 0.5, "schedule": {"end": 0.5}},
                                 {"type": "meal", "teachers": [{"stage": "train"}]}])
    config = mutated(base, data.draw) if data.draw(st.booleans()) else data.draw(VALUES)
    path = tmp_path / "generated.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    try:
        load_pipeline(path)
    except CompressError as e:
        assert str(e).startswith(str(path)) and len(str(e)) < 4000


def test_a_stage_folder_holding_the_users_files_is_never_replaced_or_deleted(write_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(write_pipeline(tiny_pipeline(stages=TWO_STAGES)), run_dir) == 0
    notes = [run_dir / "stages" / "01-train" / "notes.txt", run_dir / "stages" / "02-train" / "notes.txt"]
    for path in notes:
        path.write_text("the user's")
    assert run(write_pipeline(tiny_pipeline(stages=[TWO_STAGES[0], {**TWO_STAGES[1], "lr": 0.03}]), "b.yaml"), run_dir) == 2
    assert "stages/02-train holds files compress did not write (notes.txt), and this run has to replace it" in capsys.readouterr().err
    notes[1].unlink()
    assert run(write_pipeline(tiny_pipeline(stages=[{**TWO_STAGES[0], "lr": 0.04}]), "c.yaml"), run_dir) == 2  # stage 1 too
    notes[0].unlink()
    (run_dir / "stages" / "02-train" / "keep.txt").write_text("the user's")
    assert run(write_pipeline(tiny_pipeline(stages=[{**TWO_STAGES[0], "lr": 0.04}]), "c.yaml"), run_dir) == 0
    assert (run_dir / "stages" / "02-train" / "keep.txt").read_text() == "the user's"  # stale, but not ours alone: kept
