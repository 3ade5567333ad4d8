"""``cleanup`` itself ends every worker: when it returns, each worker process is gone and reaped.

The per-test leak check waits a few seconds for stray children, long enough for a worker that
``cleanup`` skipped to notice its closed pipe and leave on its own; here nothing waits. The
workers are this process's children (multiprocessing's own helpers aside), taken after a ``map``.

A worker skipped by ``cleanup`` also leaves on its own, at once, when the manager's handle on it
is garbage-collected (its pipes close), and the forkserver reaps it. Something that keeps those
handles alive (a traceback kept by an interactive session, a debugger) keeps such a worker running
for ever, so the tests hold them (`held_handles`): then only ``cleanup`` can end a worker.
"""

from __future__ import annotations

import gc

import faultfuncs
import psutil
import pytest
from conftest import our_children

from wemap import TaskException
from wemap.worker_process import WorkerProcess

pytestmark = pytest.mark.timeout(60)

N = 12


def held_handles() -> list:
    """Every handle on a worker process (its pipes included) this process holds now, as a debugger or
    a kept traceback would hold them (found through the garbage collector, not the mapper's insides)."""
    return [o for o in gc.get_objects() if isinstance(o, WorkerProcess)]


def still_there(procs: list[psutil.Process]) -> list[tuple[int, str]]:
    """Those of ``procs`` still running or not yet reaped (``is_running`` is False once the pid is
    gone or belongs to another process)."""
    out = []
    for p in procs:
        try:
            if p.is_running():
                out.append((p.pid, p.status()))
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("num_workers", [1, 3])
def test_cleanup_returns_with_every_worker_gone(process_mapper_cls, num_workers):
    m = process_mapper_cls(segment_func=faultfuncs.pid_of, num_workers=num_workers)
    m.init()
    try:
        ran = set(m.map(list(range(N)), victim=[-1] * N))
        workers = our_children()
        assert ran <= {p.pid for p in workers}, "the segments ran in child processes of this one"
        assert len(workers) >= num_workers
        handles = held_handles()
        assert len(handles) >= num_workers or process_mapper_cls.__name__ == "DaskMapper"  # Dask's are nannies
    except BaseException:
        m.cleanup()
        raise
    m.cleanup()
    assert still_there(workers) == [], "cleanup() returned before ending every worker"
    del handles


def test_a_failed_map_returns_with_every_worker_gone(process_mapper_cls):
    m = process_mapper_cls(segment_func=faultfuncs.raise_at, num_workers=3)
    m.init()
    try:
        m.map(list(range(N)), victim=[-1] * N, walker_idx=range(N))
        workers = our_children()
        assert len(workers) >= 3
        handles = held_handles()
        assert len(handles) >= 3 or process_mapper_cls.__name__ == "DaskMapper"
        with pytest.raises(TaskException):
            m.map(list(range(N)), victim=[4] * N, walker_idx=range(N))
        assert still_there(workers) == [], "a failed map() returned before ending every worker"
        del handles
    finally:
        m.cleanup()
