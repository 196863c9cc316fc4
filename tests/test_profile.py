"""`compress profile`: output format, trtexec parsing, report merge, calibration."""
import json
import os
import stat

import pytest
import torch

from compress.cli import main
from compress.config import ExportConfig
from compress.export.runner import export_and_validate
from compress.export.runtime import candidate_settings
from compress.models import build_model, make_spec
from compress.targets import resolve
from compress.targets.profiling import onnx_layer_costs
from compress.metrics import layer_costs


@pytest.fixture(scope="module")
def artifacts(tiny_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run") / "artifacts"
    torch.manual_seed(0)
    model = build_model(make_spec("cnn_s", 1, 10, {"channels": [8, 16]}))
    export_and_validate(model, make_spec("cnn_s", 1, 10, {"channels": [8, 16]}), tiny_data,
                        ExportConfig(formats=["onnx", "onnx-int8"], latency_runs=2, latency_batch_sizes=[1], accuracy_control=False),
                        resolve("x86-avx2"), folder)
    (folder.parent / "report.json").write_text(json.dumps({"name": "r"}))
    return folder


def test_profile_writes_percentiles_memory_and_merges_into_report(artifacts, capsys):
    assert main(["profile", str(artifacts), "--target", "host", "--batch", "1,4", "--runs", "5"]) == 0
    assert "model.fp32.onnx [CPUExecutionProvider]" in capsys.readouterr().out
    profile = json.loads((artifacts / "profile.json").read_text())
    assert profile["target"] == "host" and [r["file"] for r in profile["results"]] == ["model.fp32.onnx", "model.int8.onnx"]
    labels = [s.label for s in candidate_settings(os.cpu_count())]
    for result in profile["results"]:
        assert result["provider"] == "CPUExecutionProvider" and result["peak_rss_mb"] > 10
        assert [row["label"] for row in result["settings"]] == labels  # a row per thread setting
        for batch in ("1", "4"):
            s = result["batches"][batch]
            assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] and s["throughput_per_s"] == pytest.approx(1e3 * int(batch) / s["p50_ms"])
            assert s["setting"] == result["fastest"][batch]
            assert s["p50_ms"] == min(row["batches"][batch]["p50_ms"] for row in result["settings"])
    assert json.loads((artifacts.parent / "report.json").read_text())["profile"] == profile


def test_calibrated_profile_is_a_usable_target(artifacts, tmp_path):
    out = tmp_path / "host-calibrated.yaml"
    assert main(["profile", str(artifacts), "--target", "host", "--batch", "1,8", "--runs", "5", "--calibrate", str(out), "--quiet"]) == 0
    calibrated = resolve(str(out))
    assert calibrated.name == "host-calibrated" and 0 < calibrated.efficiency <= 1 and calibrated.layer_overhead_us >= 0
    assert "measured p50 latency" in out.read_text()


def test_onnx_layer_costs_match_torch(tiny_data, artifacts):
    model = build_model(make_spec("cnn_s", 1, 10, {"channels": [8, 16]}))
    torch_costs = layer_costs(model, (1, 28, 28))
    for path in ("model.fp32.onnx", "model.int8.onnx"):
        assert [c.macs for c in onnx_layer_costs(artifacts / path)] == [c.macs for c in torch_costs]


FAKE_TRTEXEC = """#!/bin/sh
echo "[I] Throughput: 2000.5 qps"
echo "[I] Latency: min = 0.40 ms, max = 0.90 ms, mean = 0.50 ms, median = 0.48 ms, percentile(90%) = 0.60 ms, percentile(99%) = 0.85 ms"
"""


def test_engines_are_timed_with_trtexec(artifacts, tmp_path, monkeypatch):
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "model.fp32.onnx").write_bytes((artifacts / "model.fp32.onnx").read_bytes())
    (folder / "model.fp16.engine").write_bytes(b"engine")
    trtexec = tmp_path / "bin" / "trtexec"
    trtexec.parent.mkdir()
    trtexec.write_text(FAKE_TRTEXEC)
    trtexec.chmod(trtexec.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{trtexec.parent}{os.pathsep}{os.environ['PATH']}")
    assert main(["profile", str(folder), "--target", "host", "--batch", "2", "--runs", "3", "--quiet"]) == 0
    results = {r["file"]: r for r in json.loads((folder / "profile.json").read_text())["results"]}
    engine = results["model.fp16.engine"]
    assert engine["precision"] == "fp16" and engine["provider"] == "trtexec"
    assert engine["batches"]["2"] == {"p50_ms": 0.48, "p90_ms": 0.60, "p99_ms": 0.85, "throughput_per_s": 4001.0}


@pytest.mark.parametrize("args, words", [
    (["--batch", "1,x"], "--batch: expected comma-separated positive integers"),
    (["--batch", "0"], "--batch: expected comma-separated positive integers"),
    (["--runs", "0"], "--runs: expected a positive number"),
    (["--threads", "0"], "--threads: expected comma-separated positive integers up to 4096"),
])
def test_bad_arguments(artifacts, capsys, args, words):
    assert main(["profile", str(artifacts), "--target", "host", *args]) == 2
    assert words in capsys.readouterr().err


def test_empty_folder_is_an_error(tmp_path, capsys):
    assert main(["profile", str(tmp_path), "--target", "host"]) == 2
    assert "no .onnx or .engine files" in capsys.readouterr().err
