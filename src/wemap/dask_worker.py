"""What `DaskMapper` runs in Dask's processes rather than the manager's: the worker plugin that
holds each Dask worker's `wemap.Worker`, the nanny plugin that reports how a worker process ended,
and the task that runs one walker's segment.

Dask pickles plugins and task functions by reference, so everything here is defined at module
level and imported again on the workers; it imports nothing of the manager's side.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import distributed
from distributed.diagnostics.plugin import NannyPlugin, WorkerPlugin

from .errors import WorkerException
from .worker import Task, TaskFailure, Worker, run_timed

logger = logging.getLogger(__name__)

#: event topic on which nannies report how a worker process ended
EXIT_TOPIC = "wemap-worker-exit"


def name_key(name: Any) -> tuple:
    """Sort worker names naturally: 2 before 10, ``gpu-2`` before ``gpu-10``."""
    if isinstance(name, int):
        return (0, name)
    return (1, tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(name))))


class WorkerState(WorkerPlugin):
    """Builds the `wemap.Worker` of one Dask worker process and runs its ``init`` once."""

    def __init__(self, index: dict, num_workers: int, worker_type: Callable[..., Worker], attributes: dict,
                 worker_init: Callable | None) -> None:
        self.index, self.num_workers = index, num_workers
        self.worker_type, self.attributes, self.worker_init = worker_type, attributes, worker_init
        self.worker: Worker | None = None

    async def setup(self, worker: distributed.Worker) -> None:
        idx = self.index.get(worker.name)
        if idx is None:
            idx = await self._free_index(worker)
        wm = self.worker_type(idx, self.num_workers, self.attributes, self.worker_init)
        try:  # in the task thread, not on the event loop: an OpenMM Context can take minutes
            await asyncio.get_running_loop().run_in_executor(worker.executor, wm.init)
        except Exception as exc:
            f = TaskFailure.capture(exc)
            raise WorkerException(
                f"worker {idx} (pid {wm.pid}, {worker.address}) failed in Worker.init: "
                f"{f.exc_type}: {f.exc_message}\n\n{f.traceback}", worker_idx=idx, pid=wm.pid,
            ) from None
        self.worker = wm

    async def _free_index(self, worker: distributed.Worker) -> int:
        info = await worker.scheduler.identity()
        connected = [w["name"] for w in info["workers"].values()]
        held = {self.index[n] for n in connected if n in self.index}
        free = [i for i in range(len(self.index)) if i not in held]
        newcomers = sorted((n for n in connected if n not in self.index), key=name_key)
        rank = newcomers.index(worker.name) if worker.name in newcomers else len(newcomers)
        idx = free[rank] if rank < len(free) else len(self.index) + rank - len(free)
        logger.info("Dask worker %r joined after the mapper started; it is worker %d", worker.name, idx)
        return idx

    def teardown(self, worker: distributed.Worker) -> None:
        wm, self.worker = self.worker, None
        if wm is not None:
            wm.cleanup()


class ExitReporter(NannyPlugin):
    """Publishes the pid and exit code of each worker process that ends; only its nanny knows.

    Nannies have no public hook for this, so the plugin wraps ``mark_stopped`` of the nanny's
    ``WorkerProcess`` (reused across restarts), where both are still at hand. Without it, exit
    codes are reported as unknown and nothing else changes.
    """

    def setup(self, nanny: distributed.Nanny) -> None:
        self.wp = wp = nanny.process
        original = getattr(wp, "mark_stopped", None)
        if original is None:
            return

        def mark_stopped() -> None:
            proc = getattr(wp, "process", None)
            try:
                if proc is not None and proc.exitcode is not None and nanny.status.name == "running":
                    nanny.log_event(EXIT_TOPIC, {"pid": int(proc.pid), "exitcode": int(proc.exitcode)})
            except Exception as exc:  # never break the nanny's own bookkeeping
                logger.debug("could not report a worker's exit: %s", exc)
            original()

        self.hook = wp.mark_stopped = mark_stopped

    def teardown(self, nanny: distributed.Nanny) -> None:
        wp = getattr(self, "wp", None)
        if wp is not None and wp.__dict__.get("mark_stopped") is getattr(self, "hook", None):
            del wp.mark_stopped


class Outcome(NamedTuple):
    """What a segment task returns: a segment's exception is data, so Dask never retries it."""

    kind: str  # "ok", "raised" (result is a TaskFailure) or "no_worker" (Worker.init failed)
    result: Any
    seconds: float
    worker_idx: int | None
    pid: int


def run_segment(plugin: str, func: Callable, retry_on: tuple, args: tuple, kwargs: dict) -> Outcome:
    """Run one walker's segment on the `wemap.Worker` that plugin ``plugin`` built in this process."""
    wm = getattr(distributed.get_worker().plugins.get(plugin), "worker", None)
    if wm is None:
        failure = TaskFailure("RuntimeError", "this Dask worker has no wemap Worker (its Worker.init failed)", "")
        return Outcome("no_worker", failure, 0.0, None, os.getpid())
    ok, result, seconds, _, _ = run_timed(wm, Task(func, *args, **kwargs), retry_on)
    return Outcome("ok" if ok else "raised", result, seconds, wm.worker_idx, wm.pid)
