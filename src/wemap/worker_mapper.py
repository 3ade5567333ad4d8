"""`WorkerMapper`: persistent worker processes fed one pickled task at a time.

The baseline process mapper and the right choice for small or odd-shaped walker states.
Each worker has its own duplex pipe; the manager keeps the task queue and hands the next
task to whichever worker reports back first, so results return in input order whatever
order workers finish in, and the manager always knows which walker a dead worker held.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any

from .faults import Attempts
from .mapper import PoolMapper, TaskSpec
from .pickling import dumps
from .pool import ABORT_STOP_TIMEOUT, WorkerPool, describe_exitcode
from .worker import Task, TaskFailure, Worker, run_timed
from .worker_process import control_messages, send_within

__all__ = ["WorkerMapper"]

logger = logging.getLogger(__name__)


def pipe_loop(
    worker: Worker, conn: Connection, segment_func: Callable[..., Any], retry_on: tuple[type[BaseException], ...] = ()
) -> None:
    """Worker side: block in ``recv`` for a task, run it, send ``(task_idx, ok, result, seconds)``."""
    for task_idx, args, kwargs in control_messages(conn):
        ok, result, seconds, _, _ = run_timed(worker, Task(segment_func, *args, **kwargs), retry_on)
        try:
            payload = dumps((task_idx, ok, result, seconds))
        except Exception as exc:  # an unpicklable result is the segment's bug: report it as such
            message = f"the segment's result could not be sent to the manager: {exc}"
            payload = dumps((task_idx, False, replace(TaskFailure.capture(exc), exc_message=message), seconds))
        del result
        conn.send_bytes(payload)


class WorkerMapper(PoolMapper):
    """Persistent worker processes, one task (a pickled walker) at a time per worker.

    Takes what wepy's ``WorkerMapper`` takes, in its order: ``num_workers, worker_type,
    worker_attributes, segment_func``; every other argument is keyword-only, and keywords it does
    not know become mapper `attributes` that every worker sees as ``mapper_attributes`` (wepy's
    ``OpenMMGPUWorker`` reads ``device_ids`` and ``platform`` there). ``worker_type`` is a
    `wemap.Worker` subclass or one of wepy's (``None``: the default worker).

    ``start_method`` (or wepy's name for it, ``proc_start_method``) defaults to ``forkserver``
    (``spawn`` where unavailable), so the segment function, ``worker_type``,
    ``worker_attributes`` and ``worker_init`` must pickle.
    """

    _pool: WorkerPool | None = None

    def _start(self) -> None:
        self._pool = self._start_pool(pipe_loop, (self.segment_func, self.policy.retry_on))

    def _stop(self, abort: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop(ABORT_STOP_TIMEOUT if abort else self.stop_timeout)

    def _dispatch(self, specs: list[TaskSpec]) -> list[Any]:
        pool = self._pool
        attempts = Attempts(self.policy)
        pending = deque(specs)
        idle = deque(range(len(pool.workers)))
        busy: dict[int, tuple[TaskSpec, float | None]] = {}  # worker idx -> (task, deadline)
        results: list[Any] = [None] * len(specs)
        remaining = len(specs)

        def lose(idx: int, reason: str | None = None, timed_out: bool = False) -> None:
            """Worker ``idx`` is gone (or killed for a timeout): replace it, re-queue its walker."""
            w = pool.workers[idx]
            code = w.exitcode()
            reason = reason or f"died: {describe_exitcode(code)}"
            spec = busy.pop(idx, (None, None))[0]
            if idx in idle:
                idle.remove(idx)
            if spec is None:
                logger.warning("%s %s while idle; starting a replacement", w.describe(), reason)
            else:
                attempts.lost(spec.task_idx, walker_idx=spec.walker_idx, cycle_idx=spec.cycle_idx,
                              worker=w.describe(), worker_idx=idx, pid=w.pid, exitcode=code, reason=reason,
                              timed_out=timed_out)
                pending.appendleft(spec)
            new = pool.respawn(w)
            logger.info("worker %d replaced: pid %d -> %d", idx, w.pid, new.pid)
            idle.append(idx)

        while remaining:
            while pending and idle:
                idx, spec = idle.popleft(), pending.popleft()
                w = pool.workers[idx]
                timeout = self.policy.timeout_for(first_segment=not w.served)
                try:
                    payload = dumps((spec.task_idx, spec.args, spec.kwargs))
                except Exception as exc:  # any pickling failure is the caller's input
                    raise ValueError(
                        f"walker {spec.walker_idx} (cycle {spec.cycle_idx}): its arguments cannot be sent to a "
                        f"worker process: {type(exc).__name__}: {exc}"
                    ) from exc
                deadline = None if timeout is None else time.monotonic() + timeout
                busy[idx] = (spec, deadline)
                try:
                    sent = send_within(w.conn, payload, deadline)
                except OSError:  # the worker died while idle (between cycles, say): not this walker's doing
                    sent = None
                if not sent:  # nor is a worker frozen while idle, that never reads it
                    busy.pop(idx)
                    pending.appendleft(spec)
                    if sent is None:
                        lose(idx)
                        continue
                    logger.error("%s did not read walker %d of cycle %d within its %.3g s timeout (frozen?); "
                                 "killing it", w.describe(), spec.walker_idx, spec.cycle_idx, timeout)
                    w.process.kill()
                    lose(idx, f"did not read walker {spec.walker_idx} of cycle {spec.cycle_idx} within its "
                              f"{timeout:.3g} s timeout and was killed")
            deadlines = [d for _, d in busy.values() if d is not None]
            wait_for = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            by_conn = {pool.workers[i].conn: i for i in busy}
            by_sentinel = {w.sentinel: w.idx for w in pool.workers}
            ready = wait(list(by_conn) + list(by_sentinel), wait_for)
            dead: list[int] = []
            for r in ready:
                if r in by_sentinel:
                    dead.append(by_sentinel[r])
                    continue
                idx = by_conn[r]
                w = pool.workers[idx]
                try:
                    task_idx, ok, result, seconds = w.conn.recv()
                except (EOFError, OSError):
                    dead.append(idx)
                    continue
                spec, _ = busy.pop(idx)
                w.served = True
                self._worker_segment_times[idx].append(seconds)
                idle.append(idx)
                if not ok:
                    attempts.failed(spec.task_idx, result, walker_idx=spec.walker_idx,
                                    cycle_idx=spec.cycle_idx, worker_idx=idx, pid=w.pid)
                    pending.appendleft(spec)
                    continue
                results[task_idx] = result
                remaining -= 1
            for idx in dict.fromkeys(dead):
                lose(idx)
            now = time.monotonic()
            for idx, (spec, deadline) in list(busy.items()):
                if deadline is not None and now >= deadline:
                    w = pool.workers[idx]
                    if w.conn.poll(0):  # it finished; the manager was busy (starting a replacement, say)
                        continue
                    limit = self.policy.timeout_for(first_segment=not w.served)
                    logger.error("%s ran walker %d of cycle %d past its %.3g s timeout; killing it",
                                 w.describe(), spec.walker_idx, spec.cycle_idx, limit)
                    w.process.kill()
                    lose(idx, f"ran past task_timeout ({limit:.3g} s) and was killed", timed_out=True)
        self.recovered_segments += attempts.recovered
        return results
