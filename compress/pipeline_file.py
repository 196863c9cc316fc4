"""The pipeline file: its schema, and loading it with every stage's settings validated before any work starts.

Stage modules import torch only inside their methods, so this module (and a malformed file's error) needs no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pydantic import Field, ValidationError, model_validator

from .config import DataConfig, ExportConfig, ModelConfig, Name, Strict, error_lines, problems_message, sha256_json
from .errors import ConfigError, UnknownNameError, shown
from .safe_yaml import read_yaml


class PipelineConfig(Strict):
    name: Name = Field(description="run name; the run folder is runs/<name>")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seeds the data split, initial weights and shuffles")
    model: ModelConfig = Field(description="the model the run starts from")
    data: DataConfig = Field(default_factory=DataConfig, description="the dataset and its splits")
    stages: list[dict[str, Any]] = Field(min_length=1, description="ordered list of {type: NAME, ...}")
    export: ExportConfig = Field(default_factory=ExportConfig, description="formats, validation and which models to export")
    target: Optional[str] = Field(None, description="target profile name or YAML path; --target overrides")
    targets: Optional[list[str]] = Field(None, min_length=1, description="several targets: training runs once, and each "
                                                                         "target gets its own artifacts and choice; "
                                                                         "--target a,b,c overrides")

    @model_validator(mode="after")
    def _one_target_key(self) -> "PipelineConfig":
        if self.target is not None and self.targets is not None:
            raise ValueError("give `target` (one) or `targets` (a list), not both")
        return self


@dataclass
class Pipeline:
    """A validated pipeline file: the config plus each stage's class and typed config."""

    path: Path
    config: PipelineConfig
    stages: list  # list[Stage], each holding its typed config

    def stage_hash(self, index: int, target_fingerprint: str = "") -> str:
        """Hash of everything stage `index` depends on: model, data, seed, stages 0..index, and the target(s) when one
        of those stages depends on it."""
        c = self.config
        uses_target = any(stage.target_dependence() or stage.variant_per_target for stage in self.stages[: index + 1])
        payload = {
            "model": c.model.model_dump(mode="json"),
            "data": c.data.model_dump(mode="json"),
            "seed": c.seed,
            "stages": [stage.config.model_dump(mode="json") for stage in self.stages[: index + 1]],
            "target": target_fingerprint if uses_target else None,
        }
        return sha256_json(payload)

    def target_names(self, override: Optional[str] = None) -> list[str]:
        """The targets of this run: `--target a,b,c` when given, else the file's `targets` or `target`."""
        if override:
            return [name.strip() for name in override.split(",") if name.strip()]
        return self.config.targets or ([self.config.target] if self.config.target else [])

    def config_hash(self) -> str:
        """Hash of the whole validated config."""
        return sha256_json(self.config.model_dump(mode="json"))


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline file, every stage's config included, before any work starts."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys name, model, data, stages, export, target; got {type(raw).__name__}")
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(problems_message(path, "pipeline", error_lines(e))) from None
    return Pipeline(path=path, config=config, stages=validate_stages(path, config))


def validate_stages(path: Path, config: PipelineConfig) -> list:
    """Validate each stage entry against its stage class's Config; collect every problem."""
    from .stages import STAGES

    problems, stages = [], []
    for i, entry in enumerate(config.stages):
        where = f"stages[{i}]"
        stage_type = entry.get("type")
        if stage_type is None:
            problems.append(f"{where}.type: missing; expected one of {', '.join(STAGES.names())}")
            continue
        if not isinstance(stage_type, str):
            problems.append(f"{where}.type: expected a stage name, one of {', '.join(STAGES.names())}; got {shown(stage_type)}")
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
        labels = [stage.label for stage in stages]
        if cls.needs and cls.needs not in [stage.config.type for stage in stages]:
            problems.append(f"{where}: a {stage_type} stage needs an earlier `type: {cls.needs}` stage (it reads that "
                            f"stage's output); add one before it")
        for key, label in stage_config.earlier_stages().items():
            if label not in labels:
                problems.append(f"{where}.{key}: {shown(label)} is not an earlier stage; expected one of: {', '.join(labels) or '(none)'}")
        stages.append(cls(stage_config))
    if problems:
        raise ConfigError(problems_message(path, "pipeline", problems))
    return stages
