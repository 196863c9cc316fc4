"""report.html: rendering of a synthetic report, and a real run's page opened in headless Chromium."""
from __future__ import annotations

import copy
import json
import re
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from compress.cli import main
from compress.report_html import Point, nice_ticks, pareto_front, render_html
from compress.targets.profiling import merge_into_report

from conftest import tiny_pipeline

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def artifact(name: str, precision: str, accuracy, latency, status: str = "ok", reason: str = "") -> dict:
    return {"format": "onnx", "precision": precision, "path": f"runs/demo/artifacts/{name}", "size_bytes": 710_000,
            "sha256": "0" * 64, "opset": 17, "parity": {"max_abs_diff": 7.6e-6, "top1_agreement": 1.0} if accuracy else {},
            "accuracy": accuracy, "accuracy_drop": 0.001 if accuracy else None, "latency_ms": {"1": 0.3, "32": 19.2},
            "latency_provider": "CPUExecutionProvider", "estimated_latency_ms": latency, "latency_source": "estimated",
            "notes": ["symmetric activations"], "status": status, "reason": reason}


SYNTHETIC = {
    "schema_version": 1, "name": "demo <b>&", "pipeline": "demo.yaml", "created": "2025-01-01T00:00:00+0000",
    "config_hash": "ab" * 32, "seed": 3, "device": "cpu", "seconds": 12.5, "versions": {"python": "3.11", "torch": "2.13"},
    "target": {"name": "jetson-orin-nano", "runtime": "tensorrt", "description": "Jetson <Orin>"},
    "data": {"dataset": "bundled", "train": 7200, "val": 800, "test": 1000},
    "stages": [
        {"index": 0, "type": "train", "label": "train", "status": "ran",
         "metrics": {"params": 170_000, "nonzero_params": 170_000, "sparsity": 0.0, "size_bytes": 690_000,
                     "macs": 25_000_000, "val_accuracy": 0.87, "seconds": 30.0}},
        {"index": 1, "type": "prune", "label": "prune <script>alert(1)</script>", "status": "ran",
         "metrics": {"params": 170_000, "nonzero_params": 85_000, "sparsity": 0.5, "size_bytes": 690_000,
                     "macs": 12_000_000, "val_accuracy": 0.86, "seconds": 40.0,
                     "schedule": [[10, 0.1], [20, 0.3], [30, 0.5]],
                     "layer_sparsity": {"features.0.conv": 0.25, "features.1.conv": 0.6, "classifier": 0.5},
                     "variants": [{"name": "width-0.5", "macs": 6_000_000, "val_accuracy": 0.80}]}},
    ],
    "variants": [{"label": "slim", "metrics": {"macs": 30_000_000, "val_accuracy": 0.84}}, {"name": "no numbers"}],
    "final": {"val_accuracy": 0.86, "test_accuracy": 0.855},
    "artifacts": [artifact("model.fp32.onnx", "fp32", 0.8737, 0.33), artifact("model.fp16.onnx", "fp16", 0.8737, 0.219),
                  artifact("model.int8.onnx", "int8", 0.87, 0.189),
                  artifact("model.bad.onnx", "int8", 0.5, 0.1, "rejected", "accuracy drop 37% > budget 1%"),
                  artifact("tensorrt-jetson", "int8+fp16", None, None, "bundle", "build on the device")],
    "deploy": {"path": "runs/demo/artifacts/model.int8.onnx", "format": "onnx-int8", "precision": "int8",
               "reason": "lowest estimated batch-1 latency", "bundle": "runs/demo/artifacts/tensorrt-jetson"},
    "profile": {"target": "host", "machine": {"platform": "Linux", "processor": "x86_64"}, "runs": 5,
                "results": [{"file": "model.fp32.onnx", "precision": "fp32", "provider": "CPUExecutionProvider",
                             "batches": {"1": {"p50_ms": 0.31, "p90_ms": 0.4, "p99_ms": 0.5, "throughput_per_s": 3225.0}},
                             "peak_rss_mb": 120.0}],
                "skipped": ["model.engine: trtexec not found"]},
    "run_dir": "runs/demo",
}


def svg_blocks(page: str) -> dict[str, str]:
    """Each inline SVG keyed by its aria-label."""
    return {m.group(1): m.group(0) for m in re.finditer(r'<svg[^>]*aria-label="([^"]*)".*?</svg>', page, re.S)}


def test_pareto_front_minimises_cost_and_maximises_accuracy():
    points = [Point("a", 1, 0.80), Point("b", 2, 0.85), Point("c", 3, 0.84), Point("d", 4, 0.90), Point("e", 2, 0.85)]
    assert pareto_front(points) == [0, 1, 3]
    assert pareto_front([Point("only", 5, 0.5)]) == [0]


def test_nice_ticks_cover_the_range_with_round_steps():
    assert nice_ticks(0.12, 0.33) == pytest.approx([0.1, 0.15, 0.2, 0.25, 0.3, 0.35])
    ticks = nice_ticks(5.0, 5.0)
    assert ticks[0] < 5.0 < ticks[-1]


def test_page_has_tables_plots_and_numbers():
    page = render_html(SYNTHETIC)
    assert page.startswith("<!DOCTYPE html>")
    for text in ("87.37%", "0.189 ms", "7.6e-06", "100.00%", "25M", "85,000", "50.0%", "accuracy drop 37% &gt; budget 1%",
                 "model.int8.onnx", "lowest estimated batch-1 latency", "tensorrt-jetson", "deployable", "rejected",
                 "bundle", "p99", "3,225/s", "trtexec not found", "ab" * 32, "jetson-orin-nano", "symmetric activations"):
        assert text in page, text
    plots = svg_blocks(page)
    assert set(plots) == {"Accuracy vs latency on the target (artifacts)", "Accuracy vs MACs (stages and variants)",
                          "Pruning schedule of 2. prune &lt;script&gt;alert(1)&lt;/script&gt;",
                          "Per-layer sparsity of 2. prune &lt;script&gt;alert(1)&lt;/script&gt;"}
    latency = plots["Accuracy vs latency on the target (artifacts)"]
    assert latency.count("<circle") == 4 and 'class="pareto-front"' in latency and "ms)</text>" in latency
    macs = plots["Accuracy vs MACs (stages and variants)"]
    assert macs.count("<circle") == 4 and "width-0.5" in macs and "slim" in macs and "no numbers" not in macs
    assert re.search(r">\d+M</text>", macs) and re.search(r">\d+(\.\d+)?%</text>", macs)  # numbered axes
    assert page.count('class="bar"') == 3 and 'class="schedule"' in page
    assert '<tr class="deployed has-detail"><td><code>model.int8.onnx</code>' in page
    assert "<b>accuracy drop 37% &gt; budget 1%</b>" in page and "<b>build on the device</b>" not in page


def test_all_text_is_escaped_and_nothing_is_loaded():
    page = render_html(SYNTHETIC)
    assert "<script" not in page and "demo <b>" not in page and "<Orin>" not in page
    assert "demo &lt;b&gt;&amp;" in page and "Jetson &lt;Orin&gt;" in page
    assert "http" not in page and "<script src" not in page and "@import" not in page and "url(" not in page


def test_missing_optional_keys_are_tolerated():
    minimal = {"name": "bare", "stages": [{"index": 0, "label": "train", "metrics": {}}], "artifacts": [
        {"path": "x.onnx", "status": "failed", "reason": "calibration set under 32 images"}], "deploy": None}
    page = render_html(minimal)
    assert "nothing deployable" in page and "calibration set under 32 images" in page
    assert page.count("No points to plot.") == 2 and "Pruning" not in page and "Measured on the device" not in page
    assert "<html" in render_html({})
    partial = copy.deepcopy(SYNTHETIC)
    del partial["profile"], partial["variants"], partial["stages"][1]["metrics"]["schedule"]
    partial["stages"][1]["metrics"]["variants"] = {"half": {"macs": 1e6}, "full": {"macs": 2e6, "accuracy": 0.9}}
    page = render_html(partial)
    assert "Pruning schedule" not in page and "Per-layer sparsity" in page and "full" in page and "half" not in page


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and raw scanline bytes of a PNG (enough to tell a drawn page from a blank one)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = {}, 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.setdefault(kind, []).append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][0][:8])
    return width, height, zlib.decompress(b"".join(chunks[b"IDAT"]))


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed (apt-get install chromium)")
def test_report_html_of_a_cli_run_renders_in_chromium(write_pipeline, tmp_path):
    run = tmp_path / "run"
    assert main([str(write_pipeline(tiny_pipeline())), "--run-dir", str(run), "--quiet"]) == 0
    report = json.loads((run / "report.json").read_text())
    merge_into_report(run, {"target": "host", "runs": 3, "results": [
        {"file": "model.fp32.onnx", "precision": "fp32", "provider": "CPUExecutionProvider",
         "batches": {"1": {"p50_ms": 0.123, "p90_ms": 0.2, "p99_ms": 0.3, "throughput_per_s": 8130.0}}, "peak_rss_mb": 99}]},
        run / "artifacts" / "profile.json")
    page_path = run / "report.html"
    assert "0.123 ms" in page_path.read_text() and not list(run.glob(".report.html.*"))
    url = page_path.as_uri()

    shot = tmp_path / "report.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1200,2000", url, tmp=tmp_path)
    assert shot.is_file(), result.stderr
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (1200, 2000)
    assert len(set(pixels)) > 20 and pixels.count(255) < 0.98 * len(pixels)  # drawn, not a blank page

    result = chromium("--dump-dom", "--enable-logging=stderr", "--v=0", url, tmp=tmp_path)
    dom = result.stdout
    assert 'aria-label="Accuracy vs latency on the target (artifacts)"' in dom and 'class="pareto-front"' in dom
    accuracy = report["artifacts"][0]["accuracy"]
    for text in (f"{accuracy:.2%}", f"{report['stages'][0]['metrics']['params']:,}", "model.fp32.onnx", "0.123 ms"):
        assert text in dom, text
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    assert not re.search(r"net::ERR_|Failed to load resource", result.stderr), result.stderr
