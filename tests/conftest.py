"""Fixtures every test shares: fail a test that leaves a child process or a shm segment behind."""

from __future__ import annotations

import os
import time

import numpy as np
import psutil
import pytest
from mappers import MAPPERS, PROCESS_MAPPERS, TIMEOUT_PROCESS_MAPPERS

from wemap.pool import multiprocessing_helper_pids
from wemap.slot_format import NO_BLOCK, pack_into, packed_size


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Plain ``pytest`` leaves out the tests marked ``slow`` (sanitizers, stress, faults and timeouts
    choreographed in time, whole programs), about two minutes for the rest on 2 cores; with ``CI``
    set (.ci/run sets it) or any ``-m`` expression, every test selected runs."""
    if os.environ.get("CI") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]

SHM_DIR = "/dev/shm"
#: Linux's largest possible pid (2**22)
PID_MAX_LIMIT = 2**22


def descriptor(blocks: list[int], layout: bytes, values: bytes, n_extras: int, result_block: int = NO_BLOCK) -> bytes:
    """One slot descriptor as bytes, as `wemap.slot_format.pack_into` writes it into a slot."""
    region = bytearray(packed_size(len(blocks), layout, values))
    pack_into(region, blocks, layout, values, n_extras, result_block)
    return bytes(region)


#: where a ring's ``waiters`` word lies in its control block: the wait line is its third cache line,
#: ``waiters`` that line's second 32-bit word (csrc/ring_internal.h, wm_ring_ctl and wm_wait_line)
RING_WAITERS_OFFSET = 2 * 64 + 4


def wait_for_sleeper(buf, ring_offset: int, timeout: float = 10.0) -> None:
    """Wait until a pop has registered to sleep on the ring at byte ``ring_offset`` of the segment
    ``buf`` (``layout()``'s ``ready_offset`` or ``done_offset``): a thread blocked in the ring."""
    waiters = np.frombuffer(buf, np.uint32, 1, ring_offset + RING_WAITERS_OFFSET)
    deadline = time.monotonic() + timeout
    while waiters[0] == 0:
        assert time.monotonic() < deadline, f"no pop blocked on the ring within {timeout} s"
        time.sleep(0.001)


def our_children() -> list[psutil.Process]:
    helpers = multiprocessing_helper_pids()
    out = []
    for p in psutil.Process().children(recursive=True):
        if p.pid in helpers:
            continue
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.NoSuchProcess:
            continue
        out.append(p)
    return out


def our_segments() -> set[str]:
    """Segments named after this process, or after a process that is gone (a child manager's)."""
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return set()
    out = set()
    for n in names:
        parts = n.split("_")
        if len(parts) == 3 and parts[0] == "wemap" and parts[1].isdigit():
            pid = int(parts[1])
            if pid > PID_MAX_LIMIT:  # no process's: an entry a test of the sweep made
                continue
            if pid == os.getpid() or not psutil.pid_exists(pid):
                out.add(n)
    return out


@pytest.fixture(scope="session", autouse=True)
def no_leaks_in_the_session():
    """What module fixtures (set up before a test's own check) leave is caught at the end."""
    before = our_segments()
    yield
    leaked = our_segments() - before
    for name in leaked:
        os.unlink(os.path.join(SHM_DIR, name))
    assert not leaked, f"shared-memory segments left behind by the session: {sorted(leaked)}"


def wait_for_no_children(timeout: float = 5.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    left = our_children()
    while left and time.monotonic() < deadline:
        psutil.wait_procs(left, timeout=0.2)
        left = our_children()
    return left


@pytest.fixture(autouse=True)
def no_leaks():
    """After each test: no child process of ours and no segment of ours in /dev/shm."""
    before = our_segments()
    yield
    left = wait_for_no_children()
    described = []
    for p in left:
        try:
            described.append((p.pid, p.name()))
            p.kill()
        except psutil.NoSuchProcess:
            pass
    leaked = our_segments() - before
    for name in leaked:
        os.unlink(os.path.join(SHM_DIR, name))
    problems = [f"child processes left behind: {described}"] if left else []
    problems += [f"shared-memory segments left behind: {sorted(leaked)}"] if leaked else []
    assert not problems, "; ".join(problems)


@pytest.fixture(params=list(MAPPERS))
def mapper_cls(request):
    """Each mapper class in turn (tests/mappers.py)."""
    return MAPPERS[request.param]


@pytest.fixture(params=PROCESS_MAPPERS)
def process_mapper_cls(request):
    """Each mapper class that runs segments in other processes."""
    return MAPPERS[request.param]


@pytest.fixture(params=TIMEOUT_PROCESS_MAPPERS)
def timeout_process_mapper_cls(request):
    """Each process mapper that takes ``task_timeout``."""
    return MAPPERS[request.param]
