"""The tree is clean under the project's linter and formatter (ruff; settings in
pyproject.toml), so a contributor's diff shows their change and nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["face_segmentation_pytorch", "tests", "benchmarks", "tools", "setup.py"]


def _ruff() -> list[str]:
    try:
        import ruff  # noqa: F401  (the package that ships the binary)
    except ImportError:
        pytest.fail("ruff is a test requirement (requirements-test.txt): pip install ruff")
    exe = shutil.which("ruff")
    return [exe] if exe else [sys.executable, "-m", "ruff"]


def test_ruff_check_is_clean():
    proc = subprocess.run([*_ruff(), "check", *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_is_clean():
    proc = subprocess.run([*_ruff(), "format", "--check", *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, "run `ruff format` on:\n" + proc.stdout + proc.stderr
