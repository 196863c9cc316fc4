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


def test_every_python_package_folder_is_installed():
    """pyproject.toml lists packages explicitly: a new folder of modules must be in the list, or a wheel (and the
    image) would lack it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    roots = {"compress": ROOT / "compress", "compress.export": ROOT / "export", "compress.targets": ROOT / "targets"}
    found = {f"{name}{'.' + '.'.join(p.parent.relative_to(root).parts) if p.parent != root else ''}"
             for name, root in roots.items() for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"
