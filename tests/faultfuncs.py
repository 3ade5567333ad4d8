"""Segment functions that fail at the walker a test names and log every run they make.

Module level, so worker processes (forkserver, spawn, Dask) import them by reference. Runs happen
in other processes, so each run is appended to a file (``runs``): one line per run, ``<walker_idx> <pid>``.
The failing walker is the one whose ``walker_idx`` keyword equals ``victim``.
"""

from __future__ import annotations

import os
import signal
import time


class Retryable(Exception):
    """What a test lists in ``retry_on``."""


class Unsendable:
    """A result no worker can send back: it refuses to be pickled."""

    def __reduce__(self):
        raise TypeError("this result refuses to be pickled")


def wait_for_markers(directory: str, n: int, timeout: float = 30.0) -> None:
    """Wait until ``directory`` holds ``n`` files (segments that announced themselves), or fail."""
    deadline = time.monotonic() + timeout
    while len(os.listdir(directory)) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(os.listdir(directory))} of {n} segments started within {timeout} s")
        time.sleep(0.01)


def mapper_state(m) -> str:
    """"closed" for a mapper cleaned up (it refuses ``map`` saying so), else "running"."""
    try:
        m.map([], [])
    except RuntimeError as exc:
        return "closed" if "after cleanup" in str(exc) else str(exc)
    return "running"


def log_run(runs: str | None, walker_idx) -> None:
    if runs is not None:
        # one short O_APPEND write per run: lines from several processes never interleave
        fd = os.open(runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{walker_idx} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def read_runs(runs) -> list[tuple[int, int]]:
    """The runs logged in file ``runs``: (walker_idx, pid) per run, in the order they started."""
    try:
        with open(runs) as f:
            return [(int(w), int(p)) for w, p in (line.split() for line in f)]
    except FileNotFoundError:
        return []


def raise_at(x, victim, runs=None, **kwargs):
    """Raise ValueError (a message naming no walker or cycle) at walker ``victim``; else return ``x``."""
    log_run(runs, kwargs.get("walker_idx"))
    if kwargs.get("walker_idx") == victim:
        raise ValueError("the input is bad")
    return x


def raise_retryable_at(x, victim, runs=None, **kwargs):
    """Raise `Retryable` at walker ``victim``, every time it runs."""
    log_run(runs, kwargs.get("walker_idx"))
    if kwargs.get("walker_idx") == victim:
        raise Retryable("still failing")
    return x


def kill_at(x, victim, runs=None, **kwargs):
    """SIGKILL the worker running walker ``victim``, every time it runs."""
    log_run(runs, kwargs.get("walker_idx"))
    if kwargs.get("walker_idx") == victim:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
    return x


def hang_at(x, victim, runs=None, **kwargs):
    """Sleep a minute at walker ``victim`` (a hung segment, for ``task_timeout`` to end)."""
    log_run(runs, kwargs.get("walker_idx"))
    if kwargs.get("walker_idx") == victim:
        time.sleep(60)
    return x


def unsendable_at(x, victim, **kwargs):
    """Return a result that cannot travel back to the manager at walker ``victim``."""
    if kwargs.get("walker_idx") == victim:
        return Unsendable()
    return x


_SERVED = [False]


def slow_first(x, seconds, victim=None, hang=60.0, **kwargs):
    """Sleep ``seconds`` on the worker process's first segment only (an engine being built); hang
    (``hang`` seconds) at walker ``victim``."""
    if not _SERVED[0]:
        _SERVED[0] = True
        time.sleep(seconds)
    if victim is not None and kwargs.get("walker_idx") == victim:
        time.sleep(hang)
    return x


def slow_first_hang_once(x, seconds, victim, runs, **kwargs):
    """`slow_first`, hanging a minute only on walker ``victim``'s first run (runs logged in ``runs``)."""
    log_run(runs, kwargs.get("walker_idx"))
    again = sum(1 for w, _ in read_runs(runs) if w == victim) > 1
    return slow_first(x, seconds, victim=None if again else victim, **kwargs)


def pid_of(x, **kwargs):
    """The pid of the worker process that ran the walker."""
    return os.getpid()


def fail_first_at(x, victim, runs, failures, **kwargs):
    """Raise `Retryable` on walker ``victim``'s first ``failures`` runs (counted in ``runs``), then return ``x``."""
    log_run(runs, kwargs.get("walker_idx"))
    if kwargs.get("walker_idx") == victim:
        if sum(1 for w, _ in read_runs(runs) if w == victim) <= failures:
            raise Retryable("failing for now")
    return x
