"""The C ring's own test program, optimised as released, under AddressSanitizer+UBSan and under
ThreadSanitizer.

Built from csrc/ and tests/c/ with the system C compiler, so these runs are part of the one test
command CI calls. The program bounds every wait it makes (a lost wake-up fails it in seconds), so
the timeout here is only a last resort.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "c" / "run_sanitizers.sh"


@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.slow
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
    for build in ("-O3", "ASan+UBSan", "TSan"):
        assert f"== {build} passed" in proc.stdout, f"the {build} build did not run"
    assert proc.stdout.count("mpmc, capacity edge:") == 3, "every build runs the stress test at the capacity edge"


RING_C = Path(__file__).parents[1] / "csrc" / "ring.c"
ORDERS = ("relaxed", "acquire", "release", "acq_rel", "seq_cst")


def documented_orders(text: str) -> dict[str, str]:
    """The ATOMICS table at the top of ring.c: tag -> the memory order it documents."""
    header = text[: text.index("*/")]
    table = header[header.index("ATOMICS") :]
    rows = re.findall(rf"^\s*\*\s+([A-Z]\d)\s.*?\s({'|'.join(ORDERS)})\s", table, re.MULTILINE)
    return dict(rows)


def tagged_operations(text: str) -> list[tuple[int, str, list[str]]]:
    """Every atomic operation in ring.c's code tagged ``/* X0 */``: (line, tag, the orders it passes;
    seq_cst for an operation without ``_explicit``)."""
    code_start = text.index("*/") + 2
    out = []
    for m in re.finditer(r"/\* ([A-Z]\d) \*/", text[code_start:]):
        at = code_start + m.start()
        line_start = text.rindex("\n", 0, at) + 1
        call = re.search(r"\batomic_\w+\s*\(", text[line_start:at])
        assert call, f"ring.c:{text.count(chr(10), 0, at) + 1}: tag {m.group(1)} on a line without an atomic call"
        start = line_start + call.end()  # just past the call's '(': find its ')'
        depth, i = 1, start
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        args = text[start : i - 1]
        orders = re.findall(r"memory_order_(\w+)", args) or ["seq_cst"]
        out.append((text.count("\n", 0, at) + 1, m.group(1), orders))
    return out


def test_every_atomic_in_the_ring_uses_the_order_its_table_documents():
    """A weakened order (an acquire made relaxed) compiles to the same x86-64 code, so no run of the
    ring's tests sees it there; only ThreadSanitizer or a weakly ordered CPU would. The ATOMICS table in
    ring.c says which order each tagged operation needs and why: the code must match it."""
    text = RING_C.read_text()
    table = documented_orders(text)
    assert {"P1", "P3", "P4", "C1", "C3", "W1", "W2", "X0", "I0"} <= set(table), f"ATOMICS table not read: {table}"
    ops = tagged_operations(text)
    wrong = [f"ring.c:{line}: {tag} uses {orders}, the table says {table.get(tag)}"
             for line, tag, orders in ops if tag not in table or set(orders) != {table[tag]}]
    assert not wrong, "\n".join(wrong)
    assert set(table) <= {tag for _, tag, _ in ops}, \
        f"documented but not in the code: {set(table) - {t for _, t, _ in ops}}"
    header_lines = text[: text.index("*/")].count("\n") + 1
    untagged = [n for n, line in enumerate(text.splitlines(), 1)
                if n > header_lines and re.search(r"\batomic_(?!init\b|signal_fence\b)\w+\s*\(", line)
                and not re.search(r"/\* [A-Z]\d \*/", line)]
    assert not untagged, f"ring.c: atomic operations without a tag from the ATOMICS table, lines {untagged}"
