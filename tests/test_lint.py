"""ruff and cython-lint, configured in pyproject.toml, are clean on the modules held to them."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: the shared-memory transport and its tests; other modules join as they are brought to it
RUFF_CLEAN = ["src/wemap/shm", "src/wemap/slot_format.py", "src/wemap/plain_values.py", "src/wemap/arena.py",
              "src/wemap/codec.py", "src/wemap/dask_mapper.py", "src/wemap/dask_worker.py", "src/wemap/dask_cluster.py",
              "src/wemap/dask_events.py",
              "src/wemap/memcopy.py", "tests/test_shm_mapper.py", "tests/test_codec.py", "tests/test_memcopy.py",
              "tests/test_ring.py", "tests/test_arrays.py", "tests/test_lint.py"]


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(pathlib.Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install '.[test]')")
    return path


def test_ruff_is_clean():
    out = subprocess.run([_tool("ruff"), "check", *RUFF_CLEAN], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cython_lint_is_clean():
    env_path = f"{pathlib.Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    package = ROOT / "src" / "wemap"
    cython = sorted(str(p.relative_to(ROOT)) for p in [*package.glob("*.pyx"), *package.glob("*.pxd")])
    assert "src/wemap/_ring.pyx" in cython
    out = subprocess.run([_tool("cython-lint"), *cython], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "PATH": env_path})
    assert out.returncode == 0, out.stdout + out.stderr
