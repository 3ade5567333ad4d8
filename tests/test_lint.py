"""ruff and cython-lint, configured in pyproject.toml, are clean on the whole tree."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: every Python file of these folders is held to ruff
RUFF_PATHS = ["src", "tests", "bench", "examples", "tools"]


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(pathlib.Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install '.[test]')")
    return path


def test_ruff_is_clean():
    out = subprocess.run([_tool("ruff"), "check", *RUFF_PATHS], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cython_lint_is_clean():
    env_path = f"{pathlib.Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    cython = sorted(str(p.relative_to(ROOT)) for ext in ("pyx", "pxd") for p in (ROOT / "src").rglob(f"*.{ext}"))
    assert "src/wemap/_ring.pyx" in cython
    out = subprocess.run([_tool("cython-lint"), *cython], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "PATH": env_path})
    assert out.returncode == 0, out.stdout + out.stderr
