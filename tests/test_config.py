import subprocess
import sys
from pathlib import Path

import pytest

from compress.pipeline_file import load_pipeline
from compress.errors import ConfigError
from conftest import tiny_pipeline


def test_valid_pipeline_loads_with_typed_stage_configs(write_pipeline):
    pipeline = load_pipeline(write_pipeline(tiny_pipeline()))
    (stage,) = pipeline.stages
    assert stage.type == "train" and stage.config.epochs == 1 and stage.config.lr == 0.05


def test_stage_hash_depends_on_prefix_only(write_pipeline):
    two = tiny_pipeline(stages=[{"type": "train", "epochs": 1}, {"type": "train", "epochs": 1, "lr": 0.01}])
    changed = tiny_pipeline(stages=[{"type": "train", "epochs": 1}, {"type": "train", "epochs": 2, "lr": 0.01}])
    a, b = load_pipeline(write_pipeline(two, "a.yaml")), load_pipeline(write_pipeline(changed, "b.yaml"))
    assert a.stage_hash(0) == b.stage_hash(0)
    assert a.stage_hash(1) != b.stage_hash(1)


BAD = [
    # (change to the valid pipeline, words the message must contain)
    ({"modle": {"arch": "cnn_s"}}, ["modle: unknown key"]),
    ({"stages": []}, ["stages:", "at least 1"]),
    ({"stages": [{"type": "trian"}]}, ["stages[0].type", "unknown stage 'trian'", "did you mean 'train'"]),
    ({"stages": [{"epochs": 1}]}, ["stages[0].type: missing"]),
    ({"stages": [{"type": "train", "lr": -1}]}, ["stages[0].lr", "greater than 0", "-1"]),
    ({"stages": [{"type": "train", "epochs": 1}, {"type": "train", "learning_rate": 0.1}]}, ["stages[1].learning_rate: unknown key"]),
    ({"stages": [{"type": "train", "optimizer": "lion"}]}, ["stages[0].optimizer", "'sgd', 'adam' or 'adamw'"]),
    ({"data": {"val_fraction": 1.5}}, ["data.val_fraction", "less than 1"]),
    ({"data": {"batch_size": 0}}, ["data.batch_size", "greater than 0"]),
    ({"name": "bad name/with slash"}, ["name:", "letters, digits"]),
    ({"name": "run\n"}, ["name:", "letters, digits"]),
    ({"model": {"kwargs": {}}}, ["model.arch: Field required"]),
    ({"export": {"exporter": "jit"}}, ["export.exporter"]),
    # a field's own bound holds beside its type's (pydantic lets an Annotated type's bound replace the field's)
    ({"stages": [{"type": "slice", "samples_per_step": 65}]}, ["stages[0].samples_per_step", "less than or equal to 64"]),
    ({"stages": [{"type": "slice", "bn_recalibration_batches": 10**6 + 1}]}, ["stages[0].bn_recalibration_batches", "1000000"]),
    ({"stages": [{"type": "slice", "smallest": "each"}]}, ["stages[0].smallest", "'per_depth' or 'overall'"]),
    ({"stages": [{"type": "factory", "bn_recalibration_batches": 10**6 + 1}]}, ["stages[0].bn_recalibration_batches", "1000000"]),
    ({"stages": [{"type": "factory", "generator": {"batch_size": 10**6 + 1}}]}, ["stages[0].generator.batch_size", "1000000"]),
]


@pytest.mark.parametrize("change, words", BAD)
def test_bad_config_names_file_key_and_expectation(write_pipeline, change, words):
    path = write_pipeline(tiny_pipeline(**change))
    with pytest.raises(ConfigError) as e:
        load_pipeline(path)
    message = str(e.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_all_problems_are_reported_at_once(write_pipeline):
    path = write_pipeline(tiny_pipeline(stages=[{"type": "trian"}, {"type": "train", "lr": 0}]))
    message = str(pytest.raises(ConfigError, load_pipeline, path).value)
    assert "stages[0].type" in message and "stages[1].lr" in message


def test_malformed_yaml_shows_the_line(write_pipeline):
    path = write_pipeline("name: x\nstages:\n  - {type: train\nmodel: {arch: cnn_s}\n")
    message = str(pytest.raises(ConfigError, load_pipeline, path).value)
    assert f"{path}:4:" in message and "malformed YAML" in message and "model: {arch: cnn_s}" in message


@pytest.mark.parametrize("text, words", [("- a\n- b\n", ["expected a mapping"]), ("", ["expected a mapping"])])
def test_top_level_must_be_a_mapping(write_pipeline, text, words):
    message = str(pytest.raises(ConfigError, load_pipeline, write_pipeline(text)).value)
    assert all(w in message for w in words)


def test_missing_file(tmp_path):
    assert "file not found" in str(pytest.raises(ConfigError, load_pipeline, tmp_path / "nope.yaml").value)


def test_the_base_schema_imports_no_stage_and_a_pipeline_validates_without_torch(tmp_path):
    """`import compress.config` imports no stage module, and loading a pipeline file (every stage's config included)
    imports no torch, so a malformed file fails in a fraction of a second."""
    examples = sorted(str(p) for p in (Path(__file__).parents[1] / "examples").glob("*.yaml"))
    code = ("import sys, compress.config\n"
            "assert not [m for m in sys.modules if m.startswith(('compress.stages', 'torch'))], sorted(sys.modules)\n"
            "from compress.pipeline_file import load_pipeline\n"
            f"for path in {examples!r}:\n"
            "    load_pipeline(path)\n"
            "assert 'torch' not in sys.modules, [m for m in sys.modules if m.startswith('torch')][:5]\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
