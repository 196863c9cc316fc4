"""Hardware target profiles: bundled YAML files under profiles/, or a user's YAML file given by path."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from compress.config import error_lines, problems_message, sha256_json
from compress.safe_yaml import read_yaml
from compress.errors import ConfigError, TargetError, UnknownNameError, shown
from compress.registry import Registry

from .host import detect_host
from .profile import Budgets, TargetProfile

__all__ = ["TargetProfile", "Budgets", "resolve", "registry", "load_profile", "fingerprint"]


def load_profile(path: Path) -> TargetProfile:
    """Read and validate one profile YAML file."""
    try:
        raw = read_yaml(path)
    except ConfigError as e:
        raise TargetError(str(e)) from None
    if not isinstance(raw, dict):
        raise TargetError(f"{path}: a target profile must be a mapping of fields")
    try:
        return TargetProfile.model_validate(raw)
    except ValidationError as e:
        raise TargetError(problems_message(path, "target profile", error_lines(e))) from None


@lru_cache(maxsize=1)
def registry() -> Registry[TargetProfile]:
    """Bundled profiles by name and alias."""
    targets: Registry[TargetProfile] = Registry("target")
    for entry in sorted(resources.files(__name__).joinpath("profiles").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            profile = load_profile(Path(str(entry)))
            for name in (profile.name, *profile.aliases):
                targets.add(name, profile)
    targets.add("host", detect_host())
    return targets


def resolve(name_or_path: str) -> TargetProfile:
    """A bundled profile by name or alias, or a user's profile from a YAML path."""
    path = Path(name_or_path)
    try:
        is_file = path.is_file()
    except OSError as e:  # e.g. a name too long to be a path
        raise TargetError(f"{shown(name_or_path)}: not a target name or a profile file ({e.strerror}); `compress targets` "
                          f"lists the names") from None
    if path.suffix in (".yaml", ".yml") or is_file:
        if not is_file:
            raise TargetError(f"{path}: target profile file not found" if not path.exists() else
                              f"{path}: not a regular file; give a profile YAML file")
        return load_profile(path)
    try:
        return registry().get(name_or_path)
    except UnknownNameError as e:
        raise TargetError(f"{e}. A path to your own profile YAML works too; `compress targets` lists them.") from None


def fingerprint(profile: TargetProfile) -> str:
    """Hash of a profile's fields, for resume decisions of target-dependent stages."""
    return sha256_json(profile.model_dump(mode="json"))
