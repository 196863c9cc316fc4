"""One contract for every registered stage, the built-in ones and those the test suite registers: its `example`, shrunk
by `smoke`, validates and runs through the CLI after a training stage (and the stage it `needs`), resumes without rerunning, every model it
leaves (variants included) rebuilds from spec + safetensors to the accuracy it recorded, and each one exports and
passes ONNX Runtime validation. Registering a stage is enough to have it tested here."""
import json

import pytest

import family_stage  # noqa: F401  (registers `type: family`, a stage with variants)
from compress.checkpoint import load_model_dir, read_spec
from compress.cli import main
from compress.stages import STAGES
from compress.training import evaluate
from conftest import smoke, tiny_pipeline

MODEL = {"arch": "resnet_s", "kwargs": {"widths": [16, 32], "depths": [2, 1]}}  # residual blocks to drop, room to prune
EXPORT = {"formats": ["onnx"], "variants": "all", "latency_runs": 2, "latency_batch_sizes": [1]}


def test_every_registered_stage_has_an_example_that_validates():
    for name in STAGES.names():
        cls = STAGES.get(name)
        assert cls.example["type"] == name and cls.Config.model_validate(cls.example).type == name


@pytest.mark.parametrize("stage_type", STAGES.names())
def test_stage_contract(stage_type, write_pipeline, tmp_path, tiny_data):
    cls = STAGES.get(stage_type)
    entry = {**smoke(cls.example, cls.Config), "name": "under-test"}
    needed = [smoke(STAGES.get(cls.needs).example, STAGES.get(cls.needs).Config)] if cls.needs else []
    stages = [{"type": "train", "epochs": 1}, *needed, entry]
    path = write_pipeline(tiny_pipeline(model=MODEL, stages=stages, export=EXPORT))
    run_dir = tmp_path / "run"
    argv = [str(path), "--run-dir", str(run_dir), "--quiet"]
    assert main(argv) == 0
    assert main(argv) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert [s["status"] for s in report["stages"]] == ["resumed"] * len(stages)

    folder = run_dir / "stages" / f"{len(stages):02d}-{stage_type}"
    names = list(read_spec(folder).variants)
    for model_folder in [folder, *(folder / "variants" / name for name in names)]:
        model, spec, metrics = load_model_dir(model_folder)
        assert evaluate(model, tiny_data.for_spec(spec).val)["accuracy"] == pytest.approx(metrics["val_accuracy"]), model_folder

    for variant in [None, *names]:
        (fp32,) = [a for a in report["artifacts"] if a["variant"] == variant and a["format"] == "onnx"]
        assert fp32["status"] == "ok" and fp32["parity"]["max_abs_diff"] <= 1e-4, fp32
