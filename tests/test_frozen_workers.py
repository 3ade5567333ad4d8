"""``task_timeout`` bounds every walker wherever it waits: a worker frozen while idle is killed and replaced.

A frozen worker (SIGSTOP here; a cgroup freeze or a process stuck in the kernel alike) neither
runs nor dies, so nothing but a timeout notices it. Every process mapper must treat a walker
that such a worker keeps waiting as `WorkerMapper` treats one it handed to it: kill the worker
once the walker's timeout has passed, and run the walker elsewhere.
"""

from __future__ import annotations

import signal

import numpy as np
import psutil
import pytest
import segfuncs
from conftest import our_children

import wemap
from wemap import SharedMemWorkerMapper, WorkerMapper

MAPPERS = [WorkerMapper, SharedMemWorkerMapper]


def workers() -> list[psutil.Process]:
    """The worker processes of the one mapper running (children of the forkserver included)."""
    return our_children()


def freeze(procs: list[psutil.Process]) -> None:
    for p in procs:
        p.send_signal(signal.SIGSTOP)
    for p in procs:  # stopped before the next map starts: SIGSTOP is asynchronous
        while p.status() != psutil.STATUS_STOPPED:
            pass


def thaw(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.send_signal(signal.SIGCONT)
        except psutil.NoSuchProcess:
            pass


def gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(60)
@pytest.mark.parametrize("num_workers, frozen", [(1, 1), (2, 2)], ids=["the-only-worker", "every-worker"])
@pytest.mark.parametrize("mapper_cls", MAPPERS)
@pytest.mark.slow
def test_walkers_no_worker_takes_are_run_by_replacements(mapper_cls, num_workers, frozen):
    with mapper_cls(num_workers=num_workers, segment_func=segfuncs.add, task_timeout=1, first_task_timeout=1) as m:
        assert m.map([1, 2, 3], [1, 1, 1]) == [2, 3, 4]  # the workers are up and serving
        procs = workers()
        assert len(procs) == num_workers
        stopped = procs[:frozen]
        freeze(stopped)
        try:
            assert m.map(list(range(8)), [10] * 8) == list(range(10, 18))
            assert all(gone(p) for p in stopped), "a frozen worker was not replaced"
            assert len(workers()) == num_workers
            assert m.map([1], [1]) == [2]
        finally:
            thaw(stopped)


@pytest.mark.timeout(60)
def test_a_worker_frozen_while_idle_does_not_hang_a_new_segment():
    """Walkers larger than the slots: the mapper makes a new segment, and waits for every worker to
    leave the old one first; a frozen worker never does."""
    with SharedMemWorkerMapper(num_workers=2, segment_func=segfuncs.echo, task_timeout=1, first_task_timeout=1) as m:
        small = [np.full(4, float(i)) for i in range(4)]
        assert all(np.array_equal(a, b) for a, b in zip(m.map(small, [1] * 4), small))
        procs = workers()
        stopped = procs[:1]
        freeze(stopped)
        try:
            large = [np.full(200_000, float(i)) for i in range(4)]
            out = m.map(large, [1] * 4)
            assert all(np.array_equal(a, b) for a, b in zip(out, large))
            assert gone(stopped[0]), "the frozen worker was not replaced"
        finally:
            thaw(stopped)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mapper_cls", MAPPERS)
@pytest.mark.slow
def test_walkers_waiting_behind_busy_workers_are_not_timed_out(mapper_cls):
    """The converse: a walker may wait longer than its timeout for a worker that keeps running others."""
    with mapper_cls(num_workers=1, segment_func=segfuncs.sleep_for, task_timeout=1.5, first_task_timeout=1.5) as m:
        (before,) = workers()
        # the last walker waits about 1.8 s (three segments of 0.6 s) before the one worker takes it
        assert m.map(list(range(4)), [0.6] * 4) == list(range(4))
        assert workers() == [before] and m.recovered_segments == 0


@pytest.mark.timeout(60)
@pytest.mark.slow
def test_a_worker_frozen_while_it_waits_for_a_walkers_extras_is_killed_at_the_timeout(tmp_path):
    """Values that are neither arrays nor plain travel over the worker's pipe when it asks for them;
    a worker frozen before it read more than its pipe holds no longer blocks the manager for ever."""
    ws = [wemap.Walker({"positions": np.full((10, 3), float(i)), "tags": set(range(i, i + 100_000))}, 0.125)
          for i in range(8)]
    with SharedMemWorkerMapper(segment_func=segfuncs.freeze_waiting_for_extras, num_workers=2,
                               task_timeout=4, first_task_timeout=4) as m:
        out = m.map(ws, marker_dir=[str(tmp_path)] * 8, victim=[0] * 8, walker_idx=range(8))
        frozen = int((tmp_path / "frozen").read_text())
        assert not psutil.pid_exists(frozen) or psutil.Process(frozen).status() == psutil.STATUS_ZOMBIE
    assert out == ws
