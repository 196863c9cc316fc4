"""Shared fixtures: tiny data from the bundled subset, a RunContext, a pipeline-file writer, and `smoke`, which
shrinks any config to a quick run by the values its schema declares."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from pydantic import BaseModel

from compress.config import DataConfig, config_models
from compress.context import RunContext
from compress.data import load_data
from compress.targets import resolve

TINY_DATA = {"dataset": "bundled", "limit": 256, "batch_size": 32, "calibration_size": 64}


@pytest.fixture(scope="session")
def tiny_data():
    """256 training / 256 validation / 256 test examples of the bundled Fashion-MNIST subset."""
    return load_data(DataConfig(**TINY_DATA), seed=0)


@pytest.fixture
def ctx(tiny_data, tmp_path) -> RunContext:
    torch.manual_seed(0)
    return RunContext(data=tiny_data, data_config=DataConfig(**TINY_DATA), run_dir=tmp_path, target=resolve("x86-cpu"),
                      stage_dir=tmp_path / "work")


@pytest.fixture
def write_pipeline(tmp_path):
    """Write a pipeline file from a dict (or raw text) and return its path."""

    def write(content, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


def tiny_pipeline(**overrides) -> dict:
    """A valid pipeline dict that trains cnn_s for one epoch on 256 examples."""
    config = {
        "name": "tiny",
        "seed": 0,
        "model": {"arch": "cnn_s", "kwargs": {"channels": [8, 16]}},
        "data": dict(TINY_DATA),
        "stages": [{"type": "train", "epochs": 1, "lr": 0.05}],
        "export": {"formats": ["onnx"], "latency_runs": 3, "latency_batch_sizes": [1]},
        "target": "x86-cpu",
    }
    config.update(overrides)
    return config


def smoke(entry: dict, model: type[BaseModel]) -> dict:
    """`entry` with every field whose schema declares a `smoke` value (epochs: 1, frequency: 2, latency_runs: 2, ...)
    set to it, in nested configs too: a quick run of the same settings, whatever the stage."""
    out = dict(entry)
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if "smoke" in extra:
            out[name] = extra["smoke"]
        elif inner := next(iter(config_models(field.annotation)), None):
            value = out[name] if name in out else {} if field.default_factory is not None else None
            if isinstance(value, list):
                out[name] = [smoke(item, inner) if isinstance(item, dict) else item for item in value]
            elif isinstance(value, dict) and (shrunk := smoke(value, inner)) != value:
                out[name] = shrunk
    return out
