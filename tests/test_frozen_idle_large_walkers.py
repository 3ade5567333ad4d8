"""A worker frozen while idle is handed a walker too large for its pipe's buffer: the manager must not
block writing to a process that never reads. With ``task_timeout``, the walker's timeout bounds the
hand-over too; the frozen worker is killed and the walker runs elsewhere, uncharged."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import psutil
import pytest
import segfuncs
from conftest import our_children

from wemap import WorkerMapper


def freeze(p: psutil.Process) -> None:
    p.send_signal(signal.SIGSTOP)
    while p.status() != psutil.STATUS_STOPPED:  # stopped before the map starts: SIGSTOP is asynchronous
        pass


@pytest.mark.timeout(40)
@pytest.mark.parametrize("num_workers", [1, 2])
@pytest.mark.slow
def test_walker_larger_than_the_pipe_for_a_frozen_idle_worker(num_workers):
    timeout = 1.0
    with WorkerMapper(num_workers=num_workers, segment_func=segfuncs.echo, task_timeout=timeout,
                      first_task_timeout=timeout) as m:
        small = [np.full(4, float(i)) for i in range(4)]
        assert all(np.array_equal(a, b) for a, b in zip(m.map(small, [1] * 4), small))
        frozen = our_children()[0]
        freeze(frozen)
        try:
            large = [np.full(500_000, float(i)) for i in range(4)]  # 4 MB each: more than a pipe holds
            t0 = time.monotonic()
            out = m.map(large, [1] * 4)
            took = time.monotonic() - t0
            assert all(np.array_equal(a, b) for a, b in zip(out, large))
            assert not frozen.is_running() or frozen.status() == psutil.STATUS_ZOMBIE, "the frozen worker lives on"
            assert m.recovered_segments == 0  # the walker it never took is not charged
            assert took < timeout + 10, took  # one timeout, then a replacement's start
        finally:
            try:
                frozen.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass


@pytest.mark.timeout(40)
def test_stop_does_not_block_on_a_frozen_workers_full_pipe():
    """Stopping asks each worker over its pipe; one frozen with its pipe full never reads the request,
    so the request is not sent (it could not be without blocking) and the worker is killed."""
    from wemap.pool import WorkerPool
    from wemap.worker_mapper import pipe_loop

    pool = WorkerPool(1, pipe_loop, (segfuncs.echo,), stop_timeout=1.0)
    pool.start()
    (w,) = pool.workers
    proc = psutil.Process(w.pid)
    freeze(proc)
    fd = w.conn.fileno()
    os.set_blocking(fd, False)
    try:
        while True:  # fill the pipe the frozen worker does not read
            os.write(fd, b"\\0" * 65536)
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, True)
    t0 = time.monotonic()
    pool.stop()
    assert time.monotonic() - t0 < 10
    assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
