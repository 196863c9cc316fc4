"""Write docs/config.md, the per-key reference of pipeline files and target profiles, from the pydantic models
themselves (types, defaults, ranges, descriptions), one table per model. `tests/test_docs.py` fails when the file
is stale: run `python scripts/make_config_docs.py` after changing a config model or registering a stage."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel

from compress.config import config_models
from compress.pipeline_file import PipelineConfig
from compress.stages import STAGES
from compress.stages.base import StageConfig
from compress.targets.profile import TargetProfile

OUT = Path(__file__).resolve().parents[1] / "docs" / "config.md"
INTRO = """# Configuration reference

Generated from the pydantic models by `python scripts/make_config_docs.py`; a test fails when it is stale. Every
model forbids unknown keys, values of another type (`true` for a number, `"3"` for 3) and infinite or NaN numbers;
counts and seeds fit a C int. Errors name the file, the key path and what was expected ([errors.md](errors.md)).
"""


def type_text(schema: dict) -> str:
    """A short type from a JSON-schema node: `integer (> 0)`, `cubic | linear`, `[string]`, a link to a nested model."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(type_text(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"[{type_text(schema.get('items', {}))}]"
    if kind == "object":
        values = schema.get("additionalProperties")
        return f"{{name: {type_text(values)}}}" if isinstance(values, dict) and values else "mapping"
    bounds = [f"{op} {schema[key]:,}" for key, op in (("exclusiveMinimum", ">"), ("minimum", "≥"), ("exclusiveMaximum", "<"),
                                                     ("maximum", "≤")) if key in schema]
    return f"{kind} ({', '.join(bounds)})" if bounds else kind


def model_table(model: type[BaseModel], heading: str, note: str = "") -> str:
    """A markdown section: `heading`, `note`, and a row per key of `model` (a stage's `type` and `name` first)."""
    properties = model.model_json_schema()["properties"]
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lead = StageConfig.model_fields if issubclass(model, StageConfig) else {}
    for key, field in sorted(model.model_fields.items(), key=lambda item: item[0] not in lead):
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            default = "its defaults" if isinstance(value, BaseModel) else f"`{json.dumps(value)}`"
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {type_text(properties[key])} | {default} | {meaning} |")
    return f"## {heading}\n\n{note}" + "\n".join(rows) + "\n"


def render() -> str:
    """The whole of docs/config.md: the pipeline file, its nested models, every registered stage, target profiles."""
    sections = [(PipelineConfig, "PipelineConfig", "The top level of a pipeline file.\n\n"),
                *((STAGES.get(name).Config, f"stage `{name}`", stage_note(name)) for name in built_in_stages()),
                (TargetProfile, "TargetProfile", "A target profile: `targets/profiles/*.yaml`, or your own file given to "
                                                 "`--target`.\n\n")]
    parts, written, queue = [INTRO], set(), []
    for model, heading, note in sections:
        parts.append(model_table(model, heading, note))
        written.add(model)
        queue += [m for field in model.model_fields.values() for m in config_models(field.annotation)]
    while queue:
        model = queue.pop(0)
        if model in written:
            continue
        written.add(model)
        doc = (model.__doc__ or "").strip()
        parts.append(model_table(model, model.__name__, f"{doc}\n\n" if doc else ""))
        queue += [m for field in model.model_fields.values() for m in config_models(field.annotation)]
    return "\n".join(parts)


def built_in_stages() -> list[str]:
    """The stages this project ships (a test suite or a plugin may register more)."""
    return [name for name in STAGES.names() if STAGES.get(name).__module__.startswith("compress.")]


def stage_note(name: str) -> str:
    """A stage's one-line summary (its module's docstring) and its example entry."""
    cls = STAGES.get(name)
    summary = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
    example = yaml.safe_dump([cls.example], sort_keys=False, default_flow_style=None).strip()
    return f"{summary}\n\n```yaml\n{example}\n```\n\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
