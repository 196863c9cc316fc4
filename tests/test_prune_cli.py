"""train -> prune through the command line: report, export, and resume from spec.json without pickle."""
import json

import pytest

from compress.cli import main
from conftest import tiny_pipeline

RESNET = {"arch": "resnet_s", "kwargs": {"widths": [16, 32], "depths": [1, 1]}}


@pytest.mark.parametrize("prune, check", [
    ({"method": "channel", "target_macs": 0.5}, lambda report, m: m["macs_ratio"] <= 0.5 and report["model"]["resize"]),
    ({"method": "nm"}, lambda report, m: m["sparsity_pattern"] == report["model"]["sparsity_pattern"] == "2:4"),
])
def test_train_then_prune_through_the_cli(write_pipeline, tmp_path, prune, check):
    stages = [{"type": "train", "epochs": 1, "lr": 0.05},
              {"type": "prune", "epochs": 1, "schedule": {"frequency": 2}, **prune}]
    path = write_pipeline(tiny_pipeline(model=RESNET, stages=stages))
    run = [str(path), "--run-dir", str(tmp_path / "run"), "--quiet"]
    assert main(run) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    train, pruned = report["stages"]
    m = pruned["metrics"]
    assert check(report, m) and m["schedule"][-1][0] == 6 and m["layer_sparsity"]["fc"] == 0.0
    assert m["macs"] <= train["metrics"]["macs"] and m["val_accuracy"] > 0
    (onnx,) = report["artifacts"]
    assert onnx["parity"]["top1_agreement"] == 1.0 and onnx["parity"]["max_abs_diff"] < 1e-4
    assert main(run) == 0  # resume: the pruned model is rebuilt from spec.json and safetensors
    again = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [s["status"] for s in again["stages"]] == ["resumed", "resumed"]
    assert again["artifacts"][0]["accuracy"] == onnx["accuracy"]
