"""The C ring's own test program under AddressSanitizer+UBSan and ThreadSanitizer.

Built from csrc/ and tests/c/ with the system C compiler, so the sanitizer runs are part of
the one test command CI calls.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "c" / "run_sanitizers.sh"


@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler")
def test_ring_under_sanitizers():
    # its own process group, so a timeout ends the sanitizer binaries too, not just bash
    proc = subprocess.Popen(["bash", str(SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=580)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert proc.returncode == 0, f"sanitizer run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "sanitizers: all passed" in proc.stdout
