"""Documentation that grows with the registries: the generated config reference is current, and the README shows
each built-in stage's example."""
import importlib.util
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def config_docs():
    spec = importlib.util.spec_from_file_location("make_config_docs", ROOT / "scripts" / "make_config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_current():
    docs = config_docs()
    assert (ROOT / "docs" / "config.md").read_text() == docs.render(), \
        "docs/config.md is stale: run python scripts/make_config_docs.py"


def test_readme_shows_every_built_in_stage_example():
    from compress.stages import STAGES

    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    entries = [item for block in blocks for item in (yaml.safe_load(block) or []) if isinstance(item, dict)]
    for name in config_docs().built_in_stages():
        assert STAGES.get(name).example in entries, f"README has no example of stage {name!r} (copy Stage.example)"
