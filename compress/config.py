"""Pipeline files: `yaml.safe_load` + strict pydantic models. Every error names the file, the key path and what was expected."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from .errors import ConfigError, UnknownNameError


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelConfig(Strict):
    arch: str = Field(description="registered architecture (see `compress models`), 'torchvision:NAME', 'timm:NAME' or 'python:module:function'")
    num_classes: Optional[PositiveInt] = Field(None, description="output classes; default: the dataset's")
    in_channels: Optional[PositiveInt] = Field(None, description="input channels; default: the dataset's")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the architecture")
    weights: Optional[Path] = Field(None, description="initial weights: .safetensors, or a tensors-only torch file (.pt/.pth)")


class DataConfig(Strict):
    dataset: str = Field("bundled", description="bundled | fashion-mnist | mnist | npz")
    root: Optional[Path] = Field(None, description="folder holding the dataset files (searched first)")
    path: Optional[Path] = Field(None, description="npz file with x_train, y_train[, x_test, y_test] (dataset: npz)")
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt = 512
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of the training split held out for validation")
    limit: Optional[PositiveInt] = Field(None, description="cap on examples per split, for fast runs")
    calibration_size: PositiveInt = Field(300, description="training examples kept for quantization calibration")
    augment: bool = Field(False, description="random shifts of up to 2 pixels during training")


class ExportConfig(Strict):
    formats: Optional[list[str]] = Field(None, description="exporters to run; default: what the target prefers")
    opset: Optional[PositiveInt] = Field(None, description="ONNX opset; default: the target's maximum, at most 17")
    exporter: Literal["torchscript", "dynamo"] = "torchscript"
    simplify: bool = Field(True, description="fold constants and drop redundant nodes with onnxslim")
    accuracy_control: bool = Field(True, description="INT8: keep sensitive layers in fp32 when the target sets max_accuracy_drop")
    validation_limit: PositiveInt = Field(2000, description="validation examples INT8 accuracy control evaluates")
    latency_batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 32])
    latency_runs: PositiveInt = 30


class PipelineConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="run name; the run folder is runs/<name>")
    seed: int = 0
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    stages: list[dict[str, Any]] = Field(min_length=1, description="ordered list of {type: NAME, ...}")
    export: ExportConfig = Field(default_factory=ExportConfig)
    target: Optional[str] = Field(None, description="target profile name or YAML path; --target overrides")


@dataclass
class Pipeline:
    """A validated pipeline file: the config plus each stage's class and typed config."""

    path: Path
    config: PipelineConfig
    stages: list  # list[tuple[type[Stage], StageConfig]]

    def stage_hash(self, index: int, target_fingerprint: str = "") -> str:
        """Hash of everything stage `index` depends on: model, data, seed and stages 0..index."""
        c = self.config
        uses_target = any(cls.uses_target for cls, _ in self.stages[: index + 1])
        payload = {
            "model": c.model.model_dump(mode="json"),
            "data": c.data.model_dump(mode="json"),
            "seed": c.seed,
            "stages": [cfg.model_dump(mode="json") for _, cfg in self.stages[: index + 1]],
            "target": target_fingerprint if uses_target else None,
        }
        return sha256_json(payload)

    def config_hash(self) -> str:
        """Hash of the whole validated config."""
        return sha256_json(self.config.model_dump(mode="json"))


def sha256_json(obj: Any) -> str:
    """Stable SHA-256 of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline file, every stage's config included, before any work starts."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys name, model, data, stages, export, target; got {type(raw).__name__}")
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(path, e)) from None
    return Pipeline(path=path, config=config, stages=validate_stages(path, config))


def validate_stages(path: Path, config: PipelineConfig) -> list:
    """Validate each stage entry against its stage class's Config; collect every problem."""
    from .stages import STAGES
    from .stages.base import stage_label

    problems, stages = [], []
    for i, entry in enumerate(config.stages):
        where = f"stages[{i}]"
        stage_type = entry.get("type")
        if stage_type is None:
            problems.append(f"{where}.type: missing; expected one of {', '.join(STAGES.names())}")
            continue
        try:
            cls = STAGES.get(stage_type)
        except UnknownNameError as e:
            problems.append(f"{where}.type: {e}")
            continue
        try:
            stage_config = cls.Config.model_validate(entry)
        except ValidationError as e:
            problems.extend(error_lines(e, prefix=where))
            continue
        labels = [stage_label(c) for _, c in stages]
        for key, label in stage_config.earlier_stages().items():
            if label not in labels:
                problems.append(f"{where}.{key}: {label!r} is not an earlier stage; expected one of: {', '.join(labels) or '(none)'}")
        stages.append((cls, stage_config))
    if problems:
        raise ConfigError(f"{path}: invalid pipeline:\n  " + "\n  ".join(problems))
    return stages


def read_yaml(path: Path) -> Any:
    """`yaml.safe_load` a file; a syntax error names the line and shows it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        if mark is None:
            raise ConfigError(f"{path}: malformed YAML: {e}") from None
        lines = text.splitlines()
        shown = lines[mark.line] if mark.line < len(lines) else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}:{mark.line + 1}:{mark.column + 1}: malformed YAML: {problem}\n  {mark.line + 1} | {shown}") from None


def format_validation_error(path: Path, error: ValidationError, prefix: str = "") -> str:
    """One line per problem: 'file: key.path: what was expected (got value)'."""
    return f"{path}: invalid pipeline:\n  " + "\n  ".join(error_lines(error, prefix))


def error_lines(error: ValidationError, prefix: str = "") -> list[str]:
    """Render pydantic errors as 'key.path: message (got value)'."""
    lines = []
    for e in error.errors():
        key = prefix
        for part in e["loc"]:
            key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
        message = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        got = "" if e["type"] in ("missing", "value_error") else f" (got {e['input']!r})"
        lines.append(f"{key or '<top>'}: {message}{got}")
    return lines
