"""Runtime settings of deployed files: the thread sweep, the choice, the manifest, and alternating timing rounds."""
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from compress.cli import main
from compress.config import ExportConfig
from compress.export.runner import export_and_validate
from compress.export.runtime import (RuntimeSetting, alternating_rounds, candidate_settings, estimated_choice,
                                     measured_choice, sweep_cores)
from compress.models import build_model, make_spec
from compress.targets import resolve
from conftest import tiny_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from common import THREADS, latencies  # noqa: E402


@pytest.fixture(scope="module")
def two_files(tiny_data, tmp_path_factory):
    """fp32 and INT8 ONNX files of a tiny CNN."""
    folder = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    spec = make_spec("cnn_s", 1, 10, {"channels": [8, 16]})
    artifacts, _ = export_and_validate(build_model(spec), spec, tiny_data, ExportConfig(
        formats=["onnx", "onnx-int8"], latency_runs=2, latency_batch_sizes=[1], accuracy_control=False), resolve("host"), folder)
    return {a.precision: a.path for a in artifacts}


def test_candidate_settings_sweep_every_thread_count_and_the_parallel_mode():
    assert [s.label for s in candidate_settings(1)] == ["1 thread"]
    settings = candidate_settings(4)
    assert [s.intra_op_threads for s in settings] == [1, 2, 3, 4, 2] and settings[-1].parallel and settings[-1].inter_op_threads == 2
    assert [s.label for s in candidate_settings(8, [1, 4, 4])] == ["1 thread", "4 threads"]
    assert sweep_cores(10_000) == os.cpu_count() and sweep_cores(1) == 1 and sweep_cores(None) == os.cpu_count()
    options = RuntimeSetting(2, 2, parallel=True).session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads, options.execution_mode.name) == (2, 2, "ORT_PARALLEL")


def test_alternating_rounds_take_turns_round_by_round():
    calls = []

    def session(name):
        return SimpleNamespace(get_inputs=lambda: [SimpleNamespace(name="x")], run=lambda _, feed: calls.append((name, len(feed["x"]))))

    examples = {1: np.zeros((1, 3)), 4: np.zeros((4, 3))}
    times = alternating_rounds({"a": session("a"), "b": session("b")}, examples, runs=2, rounds=3, warmup=1)
    one_round = [(n, b) for b in (1, 4) for n in "ab" for _ in range(3)]  # 1 warm-up + 2 timed calls each
    assert calls == one_round * 3
    assert all(len(times[n][b]) == 3 and all(len(r) == 2 for r in times[n][b]) for n in "ab" for b in (1, 4))


def test_two_file_timing_alternates_rounds_and_reports_ranges(two_files, tiny_data):
    timing = latencies(two_files, tiny_data, runs=3, rounds=5)
    for name in two_files:
        for threads in THREADS:
            assert len(timing.rounds[name][threads][32]) == 5
            s = timing.spread(name, 32, threads)
            assert 0 < s["min"] <= s["median"] <= s["max"]
    ratio = timing.speedup("fp32", "int8", 1)
    assert ratio["min"] <= ratio["median"] <= ratio["max"]
    assert timing.cell("int8", 1).count("-") == 1 and timing.speedup_cell("fp32", "int8", 32).endswith(")")


def sweep(p50: dict[str, tuple[float, float]]) -> dict:
    """A sweep record with the given (batch 1, batch 32) p50 per setting label."""
    rows = [{"label": label, "intra_op_num_threads": i + 1, "batches": {"1": {"p50_ms": b1}, "32": {"p50_ms": b32}}}
            for i, (label, (b1, b32)) in enumerate(p50.items())]
    fastest = {b: min(rows, key=lambda r: r["batches"][b]["p50_ms"])["label"] for b in ("1", "32")}
    return {"provider": "CPUExecutionProvider", "settings": rows, "fastest": fastest}


def test_the_choice_is_the_fastest_at_batch_1_and_a_near_tie_goes_to_the_largest_batch():
    clear = measured_choice(sweep({"1 thread": (1.0, 30.0), "2 threads": (0.5, 20.0)}), "here")
    assert clear["setting"]["label"] == "2 threads" and clear["source"] == "measured"
    assert "1 thread 2.00x slower at batch 1" in clear["reason"] and clear["latency_ms"]["32"]["1 thread"] == 30.0
    tie = measured_choice(sweep({"1 thread": (0.50, 30.0), "2 threads": (0.52, 15.0)}), "here")
    assert tie["setting"]["label"] == "2 threads" and "within 5% at batch 1 the faster at batch 32 wins" in tie["reason"]
    far = measured_choice(sweep({"1 thread": (0.50, 30.0), "2 threads": (0.60, 15.0)}), "here")
    assert far["setting"]["label"] == "1 thread"


def test_targets_not_measured_here_get_an_estimate_or_nothing_to_set(two_files):
    cpu = estimated_choice(Path(two_files["int8"]), "int8", resolve("x86-avx2"))
    assert cpu["source"] == "estimated" and cpu["setting"]["intra_op_num_threads"] == 8
    assert cpu["latency_ms"]["1"]["1 thread"] > cpu["latency_ms"]["1"]["8 threads"] and "not measured" in cpu["reason"]
    gpu = estimated_choice(Path(two_files["int8"]), "int8", resolve("jetson"))
    assert gpu["source"] == "not applicable" and gpu["setting"] is None
    unknown = estimated_choice(Path(two_files["int8"]), "int8", resolve("x86-avx2").model_copy(update={"cpu_cores": None}))
    assert unknown["setting"] is None and "no cpu_cores" in unknown["reason"]


def test_the_manifest_carries_the_runtime_setting_and_profile_measures_it_again(write_pipeline, tmp_path):
    export = {"formats": ["onnx", "onnx-int8"], "latency_runs": 2, "latency_batch_sizes": [1, 4], "accuracy_control": False}
    run_dir = tmp_path / "run"
    assert main([str(write_pipeline(tiny_pipeline(export=export))), "--target", "host,x86-avx2,jetson", "--run-dir",
                 str(run_dir), "--quiet"]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    manifest = json.loads((run_dir / "artifacts" / "manifest.json").read_text())["deployments"]
    host = manifest["host"]
    assert host["path"] == f"host/{Path(report['deployments']['host']['path']).name}" and host["runtime"] == report["deploy"]["runtime"]
    assert host["runtime"]["source"] == "measured" and host["sha256"] == report["deployments"]["host"]["sha256"]
    assert set(host["runtime"]["latency_ms"]["4"]) == {s.label for s in candidate_settings(os.cpu_count())}
    assert manifest["x86-avx2"]["runtime"]["setting"]["intra_op_num_threads"] == 8
    assert manifest["jetson-orin-nano"]["runtime"]["source"] == "not applicable"

    assert main(["profile", str(run_dir / "artifacts" / "host"), "--target", "host", "--runs", "2", "--batch", "1",
                 "--threads", "1", "--quiet"]) == 0
    runtime = json.loads((run_dir / "report.json").read_text())["deployments"]["host"]["runtime"]
    assert "by `compress profile`" in runtime["reason"] and list(runtime["latency_ms"]["1"]) == ["1 thread"]
    assert json.loads((run_dir / "artifacts" / "manifest.json").read_text())["deployments"]["host"]["runtime"] == runtime


def test_onnx_latencies_export_every_model_and_time_them_in_one_set_of_rounds(tmp_path, monkeypatch):
    """One call of the alternating rounds holds every model's session (so they take turns), at the batch sizes asked
    for (one example repeated), the runs split into rounds; each latency is the median of its rounds' medians, and
    each model's ONNX file matches torch."""
    from compress.methods import measure

    seen = {}

    def rounds(sessions, examples, runs, rounds):
        seen.update(sessions=set(sessions), shapes={b: x.shape for b, x in examples.items()}, runs=runs, rounds=rounds)
        return {"small": {1: [[2.0]] * 3, 3: [[1.0, 9.0, 2.0], [4.0, 4.0, 4.0], [3.0, 3.0, 0.5]]},
                "big": {1: [[8.0]] * 3, 3: [[5.0], [7.0], [6.0]]}}

    monkeypatch.setattr(measure, "alternating_rounds", rounds)
    torch.manual_seed(0)
    models = {name: build_model(make_spec("cnn_s", 1, 10, {"channels": c})) for name, c in (("small", [4, 8]), ("big", [16, 32]))}
    timed = measure.onnx_latencies(models, torch.randn(2, 1, 28, 28), tmp_path, [1, 3], runs=7)
    assert seen == {"sessions": {"small", "big"}, "shapes": {1: (1, 1, 28, 28), 3: (3, 1, 28, 28)}, "runs": 2, "rounds": 5}
    assert {n: t["latency_ms"] for n, t in timed.items()} == {"small": {"1": 2.0, "3": 3.0}, "big": {"1": 8.0, "3": 6.0}}
    assert all(t["max_abs_diff"] < 1e-4 for t in timed.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "small.onnx"]
