"""The headline benchmark runs end to end on a slice of the bundled data, so `bench/e2e.py` cannot rot."""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["fp32 baseline", "NNCF INT8 alone", "torch-pruning one-shot", "torch-pruning one-shot + INT8", "small dense from scratch",
        "small dense + INT8", "ours: after gradual pruning", "ours: after MEAL", "ours: deployable"]


def test_e2e_benchmark_writes_its_table_and_plot(tmp_path):
    out, plot = tmp_path / "benchmarks.md", tmp_path / "pareto.svg"
    cmd = [sys.executable, "bench/e2e.py", "--dataset", "bundled", "--limit", "600", "--epochs", "1", "--prune-epochs", "1",
           "--meal-epochs", "1", "--teacher-epochs", "1", "--runs", "3", "--rounds", "1", "--work-dir", str(tmp_path / "work"),
           "--out", str(out), "--plot", str(plot), "--quiet"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    table = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    assert [name for name in table if not name.startswith("ours: deployable")] == ROWS[:-1]
    assert table[-1].startswith("ours: deployable") and "<!-- bench:e2e:start -->" in text and "- batch 32:" in text
    assert "  - vs small dense + INT8:" in text and "type: meal" in text and "- stage: train" in text
    header = next(line for line in text.splitlines() if line.startswith("| row"))
    assert "b32 ms, 1 thr" in header and f"b32 ms, {os.cpu_count()} thr" in header or os.cpu_count() == 1
    assert "Runtime setting the pipeline recorded for its deployable file on x86-avx512-vnni: 8 threads (estimated" in text
    svg = ET.parse(plot).getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg" and len(svg.findall(".//{http://www.w3.org/2000/svg}circle")) == len(ROWS)
