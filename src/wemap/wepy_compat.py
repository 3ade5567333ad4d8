"""wepy's ``Worker`` subclasses (its OpenMM GPU and CPU workers, a user's own) inside wemap's workers.

wepy's workers are ``multiprocessing.Process`` subclasses whose ``run_task(task)`` calls
``task(**worker_kwargs)`` with per-worker keywords (wepy's ``OpenMMGPUWorker`` passes ``platform``
and ``DeviceIndex``). wemap builds one in each of its worker processes, never starts it, and calls
its ``run_task`` for every segment: the queues, the process and the signal handling stay wemap's.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .worker import Task, Worker

__all__ = ["is_wepy_worker_type", "WepyWorker"]


def is_wepy_worker_type(worker_type: Any) -> bool:
    """True for wepy's ``Worker`` and its subclasses (wepy installed); False for anything else.

    wepy is imported only here, when a worker type could be one of its classes.
    """
    if not isinstance(worker_type, type) or issubclass(worker_type, Worker):
        return False
    try:
        from wepy.work_mapper.mapper import Worker as WepyWorkerBase
    except Exception:  # wepy missing, or a broken install that is not ours to report
        return False
    return issubclass(worker_type, WepyWorkerBase)


class WepyWorker(Worker):
    """A wemap `Worker` that runs every task through a wepy worker object's ``run_task``.

    The wepy object is built in `init`, in the worker process, exactly as wepy's ``WorkerMapper``
    builds it: ``worker_type(worker_idx, task_queue, result_queue, exception_queue, interrupt_conn,
    mapper_attributes=..., **worker_attributes)``, with no queues (wemap moves the tasks). Its
    constructor's SIGTERM handler, which reports through those queues, is undone: SIGTERM stays
    wemap's shutdown.
    """

    def __init__(
        self,
        wepy_type: type,
        worker_idx: int,
        num_workers: int,
        attributes: Mapping[str, Any] | None = None,
        worker_init: Callable[[Worker], Any] | None = None,
    ) -> None:
        super().__init__(worker_idx, num_workers, attributes, worker_init)
        self.wepy_type = wepy_type
        self.wepy_worker: Any = None

    def init(self) -> None:
        self.wepy_worker = _build(self.wepy_type, self.worker_idx, self.mapper_attributes, self.attributes)
        super().init()

    def run_task(self, task: Task) -> Any:
        return self.wepy_worker.run_task(task)

    def __repr__(self) -> str:
        return f"WepyWorker({self.wepy_type.__qualname__}, worker_idx={self.worker_idx}, pid={self.pid})"


_signal_lock = threading.Lock()


def _build(wepy_type: type, worker_idx: int, mapper_attributes: dict, attributes: dict) -> Any:
    """Construct a wepy worker object without letting it take over SIGTERM.

    wepy's ``Worker.__init__`` calls ``signal.signal(SIGTERM, ...)``, which only the main thread
    may do (a Dask worker runs tasks in other threads): it is a no-op while the object is built.
    """
    real_signal = signal.signal

    def keep_handlers(signum: int, handler: Any) -> Any:
        return signal.getsignal(signum)

    with _signal_lock:
        signal.signal = keep_handlers  # type: ignore[assignment]
        try:
            return wepy_type(worker_idx, None, None, None, None, mapper_attributes=dict(mapper_attributes),
                             **dict(attributes))
        finally:
            signal.signal = real_signal  # type: ignore[assignment]
