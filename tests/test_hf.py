"""Hugging Face models (`arch: hf:`): tiny ResNet, MobileNetV2 and ConvNeXt built from configs, loaded from folders
as `save_pretrained` writes them, channel-pruned, distilled, exported and rebuilt from spec + safetensors."""
import json

import pytest
import torch

from compress.checkpoint import load_model_dir
from compress.cli import main
from compress.models import build_model, load_weights, make_spec
from compress.models.hf import initial_weights
from conftest import tiny_pipeline

transformers = pytest.importorskip("transformers")

FAMILIES = {  # small enough for 1x28x28 and a few seconds of CPU
    "resnet": {"embedding_size": 8, "hidden_sizes": [16, 32], "depths": [1, 1], "layer_type": "basic"},
    "mobilenet_v2": {"image_size": 28, "depth_multiplier": 0.35},
    "convnext": {"patch_size": 2, "hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2},
}


def hf_folder(tmp_path, model_type: str) -> str:
    """A folder with config.json and model.safetensors of a seeded, randomly initialised model."""
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, num_channels=1, num_labels=10, **FAMILIES[model_type])
    folder = tmp_path / model_type
    transformers.AutoModelForImageClassification.from_config(config).save_pretrained(folder)
    return str(folder)


def report(run_dir) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def test_folder_weights_are_loaded_and_the_spec_rebuilds_without_the_folder(tmp_path):
    folder = hf_folder(tmp_path, "convnext")
    reference = transformers.AutoModelForImageClassification.from_pretrained(folder).eval()
    spec = make_spec("hf:" + folder, 1, 10)
    model = load_weights(build_model(spec), initial_weights(spec.arch)).eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(model(x), reference(x).logits)
    (tmp_path / "convnext" / "config.json").unlink()  # the spec holds the config
    assert torch.allclose(load_weights(build_model(spec), tmp_path / "convnext" / "model.safetensors").eval()(x), model(x))
    assert initial_weights("hf:" + folder + "/x.json") is None and initial_weights("cnn_s") is None
    deeper = build_model(spec.model_copy(update={"kwargs": {**spec.kwargs, "depths": [2, 1]}}))  # kwargs override config fields
    assert len(deeper.convnext.encoder.stages[0].layers) == 2


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_each_family_is_channel_pruned_exported_validated_and_rebuilt(model_type, write_pipeline, tmp_path):
    run_dir = tmp_path / "run"
    pipeline = tiny_pipeline(model={"arch": "hf:" + hf_folder(tmp_path, model_type)},
                             stages=[{"type": "prune", "method": "channel", "target_macs": 0.5, "epochs": 1,
                                      "schedule": {"kind": "one_shot"}}])
    assert main([str(write_pipeline(pipeline)), "--run-dir", str(run_dir), "--quiet"]) == 0
    r = report(run_dir)
    metrics = r["stages"][0]["metrics"]
    assert metrics["macs_ratio"] <= 0.5 and metrics["round_to"] == 8
    (artifact,) = r["artifacts"]
    assert artifact["parity"]["max_abs_diff"] <= 1e-4 and artifact["parity"]["top1_agreement"] == 1.0
    model, spec, _ = load_model_dir(run_dir / "stages" / "01-prune")
    assert spec.kwargs["config"]["model_type"] == model_type and any(t.kind == "resize" for t in spec.transforms)
    x = torch.randn(2, 1, 28, 28)
    assert model.eval()(x).shape == (2, 10)


def test_meal_with_a_hugging_face_student_and_teacher(write_pipeline, tmp_path):
    teacher = hf_folder(tmp_path, "resnet")
    run_dir = tmp_path / "run"
    pipeline = tiny_pipeline(model={"arch": "hf:" + hf_folder(tmp_path, "convnext")},
                             stages=[{"type": "meal", "epochs": 1, "teachers": [{"arch": "hf:" + teacher}]}])
    assert main([str(write_pipeline(pipeline)), "--run-dir", str(run_dir), "--quiet"]) == 0
    r = report(run_dir)
    assert r["stages"][0]["metrics"]["teachers"][0]["weights"].endswith("model.safetensors")
    assert r["artifacts"][0]["parity"]["max_abs_diff"] <= 1e-4
