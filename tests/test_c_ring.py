"""The C ring's own test program under AddressSanitizer+UBSan and ThreadSanitizer.

Built from csrc/ and tests/c/ with the system C compiler, so the sanitizer runs are part of
the one test command CI calls.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "c" / "run_sanitizers.sh"


@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler")
def test_ring_under_sanitizers():
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, f"sanitizer run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "sanitizers: all passed" in proc.stdout
