"""The suite runs without the optional extras: with OpenMM, wepy or Dask missing, every test file is
collected, and what needs the missing one skips (checked here for collection, in a fresh interpreter
where the extras cannot be imported, as on a machine that never installed them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

TESTS = Path(__file__).resolve().parent

#: makes the modules named in WEMAP_BLOCK unimportable in every interpreter started with it on
#: its path (worker processes too), as if they were not installed
BLOCKER = """\
import os
import sys

for _name in filter(None, os.environ.get("WEMAP_BLOCK", "").split(",")):
    sys.modules[_name] = None
"""


@pytest.mark.parametrize("missing", ["openmm", "wepy", "dask,distributed", "openmm,wepy,dask,distributed"])
@pytest.mark.slow
def test_every_test_file_is_collected_without(missing, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "WEMAP_BLOCK": missing}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           str(TESTS)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0 and " error" not in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]
    skipped = proc.stdout.count("SKIPPED") + proc.stdout.count("skipped")
    assert skipped, "nothing skipped: the extra was not blocked"
