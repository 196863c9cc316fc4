"""The README's promise: the quickstart trains to at least 80% and exports ONNX within 1e-4 of torch."""
import json
from pathlib import Path

from compress.cli import main

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"


def test_quickstart_meets_its_promise(tmp_path):
    assert main([str(QUICKSTART), "--target", "jetson", "--run-dir", str(tmp_path), "--quiet"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["stages"]) >= 2
    assert report["final"]["val_accuracy"] >= 0.80
    fp32 = next(a for a in report["artifacts"] if a["format"] == "onnx")
    assert fp32["parity"]["max_abs_diff"] <= 1e-4
    assert report["deploy"] is not None
