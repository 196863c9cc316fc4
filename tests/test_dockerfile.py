"""The Dockerfile cannot be built here (no Docker engine); it is linted with hadolint instead."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_passes_hadolint():
    beside_python = Path(sys.executable).with_name("hadolint")
    hadolint = shutil.which("hadolint") or (str(beside_python) if beside_python.exists() else None)
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install -e '.[dev]' brings it)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_copies_every_package_folder():
    text = (ROOT / "Dockerfile").read_text()
    for folder in ("compress", "export", "targets"):
        assert f"COPY {folder} ./{folder}" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {"compress", "export", "targets", "pyproject.toml", "README.md"} & set(ignored)
