"""The base schema of every configuration: strict pydantic models, bounded value types, hashes and error rendering.

Nothing here imports torch or a stage, so a pipeline file is validated in a fraction of a second. The pipeline file's
own schema, which needs the stage registry, is in `pipeline_file.py`.
"""
from __future__ import annotations

import hashlib
import json
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from .errors import shown

INT_MAX = 2**31 - 1  # every count and seed fits a C int, as torch, NumPy and ONNX Runtime need
MIN_OPSET = 11  # the lowest opset every exporter here handles (NNCF's INT8 needs 10, dynamic shapes 11)
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"  # names that become file names or script text (fullmatch)

def safe_name(value: str) -> str:
    """A name that becomes a file name or script text: letters, digits, '.', '_', '-'; no path, no line break."""
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(f"must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit (it becomes "
                         f"part of file names), got {shown(value)}")
    return value


def builder_kwargs(value: dict[str, Any]) -> dict[str, Any]:
    """Architecture arguments: everything but what the model config sets itself."""
    clash = [k for k in ("in_channels", "num_classes") if k in value]
    if clash:
        raise ValueError(f"{clash[0]} is set by the model's own `{clash[0]}` key (default: the dataset's), not in kwargs")
    return value


# A field that needs a tighter bound than these says `int = Field(..., ge=0, le=N)`: pydantic lets an alias's own
# bound replace the one in `Count = Field(..., le=N)`, silently (tests/test_config.py).
Count = Annotated[int, Field(gt=0, le=INT_MAX)]
Natural = Annotated[int, Field(ge=0, le=INT_MAX)]
Name = Annotated[str, AfterValidator(safe_name)]
FilePath = Annotated[Path, Field(strict=False)]  # YAML gives a string
Kwargs = Annotated[dict[str, Any], AfterValidator(builder_kwargs)]


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, and so are values of another type (no `true` for 1, no
    '3' for 3) and infinite or NaN numbers."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, protected_namespaces=())


class ModelConfig(Strict):
    arch: str = Field(description="registered architecture (see `compress models`), 'torchvision:NAME', 'timm:NAME', "
                                  "'hf:FOLDER' / 'hf:CONFIG.json' (a local Hugging Face image classifier) or 'python:module:function'")
    num_classes: Optional[Count] = Field(None, description="output classes; default: the dataset's")
    in_channels: Optional[Count] = Field(None, description="input channels; default: the dataset's")
    kwargs: Kwargs = Field(default_factory=dict, description="extra keyword arguments for the architecture")
    weights: Optional[FilePath] = Field(None, description="initial weights: .safetensors, or a tensors-only torch file "
                                                          "(.pt/.pth); default for 'hf:FOLDER': the folder's weights")


class DataConfig(Strict):
    dataset: str = Field("bundled", description="bundled | fashion-mnist | mnist | npz")
    root: Optional[FilePath] = Field(None, description="folder holding the dataset files (searched first)")
    path: Optional[FilePath] = Field(None, description="npz file with x_train, y_train[, x_test, y_test] (dataset: npz)")
    batch_size: Count = Field(128, description="training batch (the global batch under torchrun)")
    eval_batch_size: Count = Field(512, description="batch of evaluation and prediction passes")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of the training split held out for validation")
    limit: Optional[Count] = Field(None, description="cap on examples per split, for fast runs")
    calibration_size: Count = Field(300, description="training examples kept for quantization calibration")
    augment: bool = Field(False, description="random shifts of up to 2 pixels during training")


class ExportConfig(Strict):
    formats: Optional[list[str]] = Field(None, min_length=1, description="exporters to run; default: what the target prefers")
    opset: Optional[int] = Field(None, ge=MIN_OPSET, le=INT_MAX, description=f"ONNX opset, at least {MIN_OPSET}; "
                                                                            f"default: the target's maximum, at most 17")
    exporter: Literal["torchscript", "dynamo"] = Field("torchscript", description="torch.onnx's TorchScript exporter, "
                                                                               "or its torch.export-based one")
    simplify: bool = Field(True, description="fold constants and drop redundant nodes with onnxslim")
    accuracy_control: bool = Field(True, description="INT8: keep sensitive layers in fp32 when the target sets max_accuracy_drop")
    validation_limit: Count = Field(2000, description="validation examples INT8 accuracy control evaluates",
                                    json_schema_extra={"smoke": 200})
    latency_batch_sizes: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [1, 32], min_length=1, description="batch sizes timed on this machine", json_schema_extra={"smoke": [1]})
    latency_runs: int = Field(30, ge=1, le=100_000, description="timed runs per batch size (after warm-up)",
                              json_schema_extra={"smoke": 2})
    variants: Union[Literal["primary", "all"], list[Name]] = Field(
        "primary", description="which models of the stages' families to export besides the final one: primary (none), all, "
                               "or a list of variant names")


class TrainConfig(Strict):
    """Optimisation settings shared by every training stage."""

    epochs: int = Field(1, ge=1, le=100_000, description="passes over the training split", json_schema_extra={"smoke": 1})
    optimizer: Literal["sgd", "adam", "adamw"] = Field("sgd", description="sgd (Nesterov momentum), adam or adamw")
    lr: float = Field(0.05, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    weight_decay: float = Field(5e-4, ge=0, description="applied to weight matrices/kernels, not to biases or norms")
    schedule: Literal["cosine", "constant", "step"] = Field("cosine", description="per-step learning-rate schedule: cosine "
                                                                                  "(to zero), step (x0.1 at 50% and 75%), constant")
    warmup_epochs: float = Field(0.0, ge=0, le=100_000, description="linear warm-up, may be fractional")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    grad_clip: Optional[float] = Field(None, gt=0, description="clip the global gradient norm")
    channels_last: bool = Field(False, description="train in the NHWC memory layout: faster convolutions on CPU (per "
                                                   "step here: 1.3-1.5x for the 32-64-128 resnet_s, 1.4-1.6x and 1.1-1.3x for "
                                                   "it pruned to 1/8 and 1/16 of its MACs); it holds through channel pruning "
                                                   "and in the slice stage's sub-networks, and the model is returned in the "
                                                   "default layout")


def config_models(annotation: Any) -> list[type[BaseModel]]:
    """The config models a field's annotation holds: itself, or those inside Optional, list, dict or a union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in config_models(arg)]


def sha256_json(obj: Any) -> str:
    """Stable SHA-256 of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def problems_message(path: Path, what: str, problems: list[str], limit: int = 20) -> str:
    """'FILE: invalid WHAT:' and one indented line per problem, the first `limit` of them."""
    more = [f"... and {len(problems) - limit} more"] if len(problems) > limit else []
    return f"{path}: invalid {what}:\n  " + "\n  ".join(problems[:limit] + more)


def error_lines(error: ValidationError, prefix: str = "") -> list[str]:
    """Render pydantic errors as 'key.path: message (got value)', the value cut short when it is long."""
    lines = []
    for e in error.errors():
        key = prefix
        for part in e["loc"]:
            key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
        message = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        got = "" if e["type"] in ("missing", "value_error") else f" (got {shown(e['input'])})"
        lines.append(f"{key or '<top>'}: {message}{got}")
    return lines
