"""Hugging Face image classifiers: 'hf:FOLDER' (config.json + weights, as `save_pretrained` writes them) or
'hf:CONFIG.json' (random weights). The model is built by transformers' AutoModelForImageClassification from the
config alone: nothing is downloaded and no code from the folder runs. The spec records the config, so a pruned model
is rebuilt from spec.json + safetensors without the folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from torch import nn

from ..errors import ModelError, described
from . import ADAPTERS, optional_import

CONFIG = "config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # the second is read with weights_only=True, like any torch file


def config_path(ref: str) -> Path:
    """The config file an 'hf:' reference names: FOLDER/config.json, or the .json file itself."""
    path = Path(ref).expanduser()
    if path.is_dir():
        path = path / CONFIG
        if not path.is_file():
            raise ModelError(f"model 'hf:{ref}': the folder has no {CONFIG}; give a folder written by save_pretrained "
                             f"or a config .json file")
    elif not path.is_file():
        raise ModelError(f"model 'hf:{ref}': no such folder or config file")
    return path


def read_config(ref: str) -> dict[str, Any]:
    """The config dict of an 'hf:' reference, checked to be local and free of remote code."""
    path = config_path(ref)
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"model 'hf:{ref}': {path} is not a readable JSON config ({described(e)})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelError(f"model 'hf:{ref}': {path} has no 'model_type'; it is not a transformers config")
    check_config(config, f"model 'hf:{ref}'")
    return config


def check_config(config: dict[str, Any], where: str) -> None:
    """Refuse a config whose model needs its own code (trust_remote_code stays off)."""
    if config.get("auto_map"):
        raise ModelError(f"{where}: the config maps to custom code ({', '.join(sorted(config['auto_map']))}); compress "
                         f"does not run code from model folders (trust_remote_code is off). Use a model type built into "
                         f"transformers, or a 'python:' builder you trust")


def initial_weights(arch: str) -> Optional[Path]:
    """The weights file that comes with an 'hf:FOLDER' reference (None for other references and config files)."""
    source, _, ref = arch.partition(":")
    if source != "hf" or not Path(ref).expanduser().is_dir():
        return None
    folder = Path(ref).expanduser()
    found = next((folder / name for name in WEIGHTS if (folder / name).is_file()), None)
    if found is None:
        raise ModelError(f"model 'hf:{ref}': the folder has no weights ({' or '.join(WEIGHTS)}); sharded checkpoints "
                         f"are not read: save the model as one file, or point to its config.json for random weights")
    return found


def logits(module: nn.Module, inputs: tuple, output: Any):
    """Forward hook: the logits tensor of a transformers output object (or of its tuple form)."""
    return output.logits if hasattr(output, "logits") else output[0]


@ADAPTERS.register("hf")
def hf_model(ref: str, in_channels: int, num_classes: int, config: Optional[dict[str, Any]] = None,
             **overrides: Any) -> nn.Module:
    """'hf:FOLDER' or 'hf:CONFIG.json' with `num_channels` and `num_labels` set from the spec and the model's other
    kwargs overriding config fields; returns logits."""
    where = f"model 'hf:{ref}'"
    config = {**(read_config(ref) if config is None else config), **overrides}
    check_config(config, where)
    transformers = optional_import("transformers", "hf")
    model_type = config.pop("model_type")
    for key in ("num_labels", "id2label", "label2id", "transformers_version", "architectures"):  # the spec decides the head
        config.pop(key, None)
    try:
        hf_config = transformers.AutoConfig.for_model(model_type, **{**config, "num_channels": in_channels, "num_labels": num_classes})
    except (ValueError, KeyError) as e:
        raise ModelError(f"{where}: model_type {model_type!r} is not one transformers knows: {str(e)[:200]}") from None
    try:
        model = transformers.AutoModelForImageClassification.from_config(hf_config, trust_remote_code=False)
    except ValueError:
        raise ModelError(f"{where}: a {type(hf_config).__name__} ({model_type!r}) is not an image classifier; "
                         f"AutoModelForImageClassification has no model for it") from None
    model.register_forward_hook(logits)
    return model
