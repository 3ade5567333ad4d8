"""Fixtures every test shares: fail a test that leaves a child process or a shm segment behind."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from wemap.pool import multiprocessing_helper_pids

SHM_DIR = "/dev/shm"


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
    try:
        return {n for n in os.listdir(SHM_DIR) if n.startswith(f"wemap_{os.getpid()}_")}
    except FileNotFoundError:
        return set()


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
    for p in left:
        p.kill()
    assert not left, f"child processes left behind: {[(p.pid, p.name()) for p in left]}"
    leaked = our_segments() - before
    for name in leaked:
        os.unlink(os.path.join(SHM_DIR, name))
    assert not leaked, f"shared-memory segments left behind: {sorted(leaked)}"
