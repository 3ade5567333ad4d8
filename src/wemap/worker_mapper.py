"""`WorkerMapper`: persistent worker processes fed one pickled task at a time.

The baseline process mapper and the right choice for small or odd-shaped walker states.
Each worker has its own duplex pipe; the manager keeps the task queue and hands the next
task to whichever worker reports back first, so results return in input order whatever
order workers finish in, and the manager always knows which walker a dead worker held.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection, wait
from typing import Any

from .errors import WorkerException
from .mapper import MapperBase, TaskSpec
from .pool import WorkerPool, WorkerProcess, default_start_method, describe_exitcode
from .worker import Task, TaskFailure, Worker, run_timed

__all__ = ["WorkerMapper"]

logger = logging.getLogger(__name__)


def pipe_loop(worker: Worker, conn: Connection, segment_func: Callable[..., Any]) -> None:
    """Worker side: block in ``recv`` for a task, run it, send ``(task_idx, ok, result, seconds)``."""
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        task_idx, args, kwargs = msg
        ok, result, seconds, _, _ = run_timed(worker, Task(segment_func, *args, **kwargs))
        try:
            conn.send((task_idx, ok, result, seconds))
        except Exception as exc:  # an unpicklable result is the segment's bug: report it as such
            failure = TaskFailure.capture(exc)
            failure = TaskFailure(
                failure.exc_type, f"the segment's result could not be sent to the manager: {exc}", failure.traceback
            )
            conn.send((task_idx, False, failure, seconds))


class WorkerMapper(MapperBase):
    """Persistent worker processes, one task (a pickled walker) at a time per worker.

    ``start_method`` defaults to ``forkserver`` (``spawn`` where unavailable), so the segment
    function, ``worker_type``, ``worker_attributes`` and ``worker_init`` must pickle.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        segment_func: Callable[..., Any] | None = None,
        worker_type: type[Worker] = Worker,
        worker_attributes: Mapping[str, Any] | None = None,
        worker_init: Callable[[Worker], Any] | None = None,
        start_method: str | None = None,
        start_timeout: float = 120.0,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(segment_func, num_workers, worker_type, worker_attributes, worker_init)
        self.start_method = start_method or default_start_method()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._pool: WorkerPool | None = None

    def _start(self) -> None:
        pool = WorkerPool(
            self._worker_count(),
            pipe_loop,
            (self.segment_func,),
            worker_type=self.worker_type,
            worker_attributes=self.worker_attributes,
            worker_init=self.worker_init,
            start_method=self.start_method,
            start_timeout=self.start_timeout,
        )
        pool.check_picklable(
            segment_func=self.segment_func,
            worker_type=self.worker_type,
            worker_attributes=self.worker_attributes,
            worker_init=self.worker_init,
        )
        pool.start()
        self._pool = pool

    def _stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop(self.stop_timeout)

    def _run(self, specs: list[TaskSpec]) -> list[Any]:
        try:
            return self._dispatch(specs)
        except BaseException:
            # Any failure leaves no process behind; cleanup() stays safe to call again.
            self.cleanup()
            raise

    def _dispatch(self, specs: list[TaskSpec]) -> list[Any]:
        assert self._pool is not None
        workers = self._pool.workers
        pending = deque(specs)
        idle = deque(workers)
        busy: dict[int, TaskSpec] = {}
        results: list[Any] = [None] * len(specs)
        by_conn = {w.conn: w for w in workers}
        by_sentinel = {w.sentinel: w for w in workers}
        remaining = len(specs)
        while remaining:
            while pending and idle:
                w, spec = idle.popleft(), pending.popleft()
                busy[w.idx] = spec
                try:
                    w.conn.send((spec.task_idx, spec.args, spec.kwargs))
                except (OSError, ValueError):
                    raise self._death(w, spec) from None
            ready = wait([workers[i].conn for i in busy] + list(by_sentinel))
            for r in sorted(ready, key=lambda r: isinstance(r, int)):  # results before deaths
                if isinstance(r, int):
                    w = by_sentinel[r]
                    raise self._death(w, busy.get(w.idx))
                w = by_conn[r]
                if w.idx not in busy:
                    continue
                try:
                    task_idx, ok, result, seconds = w.conn.recv()
                except (EOFError, OSError):
                    raise self._death(w, busy.get(w.idx)) from None
                spec = busy.pop(w.idx)
                if not ok:
                    raise result.to_exception(
                        walker_idx=spec.walker_idx, cycle_idx=spec.cycle_idx, worker_idx=w.idx, pid=w.pid
                    )
                results[task_idx] = result
                self._worker_segment_times[w.idx].append(seconds)
                idle.append(w)
                remaining -= 1
        return results

    def _death(self, w: WorkerProcess, spec: TaskSpec | None) -> WorkerException:
        code = w.exitcode()
        doing = (
            f"while running walker {spec.walker_idx} of cycle {spec.cycle_idx}"
            if spec is not None
            else "while idle"
        )
        logger.error("%s died %s: %s", w.describe(), doing, describe_exitcode(code))
        return WorkerException(
            f"{w.describe()} died {doing}: {describe_exitcode(code)}",
            worker_idx=w.idx,
            pid=w.pid,
            exitcode=code,
            walker_idx=spec.walker_idx if spec else None,
            cycle_idx=spec.cycle_idx if spec else None,
        )
