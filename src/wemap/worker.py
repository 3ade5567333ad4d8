"""What runs a segment: `Task` (a function and its arguments) and `Worker` (the per-process
object that owns persistent resources such as an OpenMM ``Context`` on one GPU).

Subclass `Worker`, or pass ``worker_init``, to build expensive per-worker state once; the
segment function reaches it through `current_worker()`.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import TaskException

__all__ = ["Task", "Worker", "WorkerFactory", "current_worker", "TaskFailure"]

# per thread: a Dask worker with several threads runs several segments at once
_local = threading.local()


def current_worker() -> Worker | None:
    """Return the `Worker` running the current segment, or ``None`` outside any mapper.

    This is how a segment function finds its worker index, device and persistent
    resources: ``w = wemap.current_worker(); ctx = w.resource``.
    """
    return getattr(_local, "worker", None)


def _set_current(worker: Worker | None) -> Worker | None:
    previous = getattr(_local, "worker", None)
    _local.worker = worker
    return previous


class Task:
    """A segment function with the arguments of one walker.

    Calling it runs ``func(*args, **kwargs, **worker_kwargs)``: a `Worker` subclass may inject
    per-worker keyword arguments (wepy's GPU workers pass ``DeviceIndex`` this way).
    """

    __slots__ = ("func", "args", "kwargs")

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs

    def __call__(self, **worker_kwargs: Any) -> Any:
        return self.func(*self.args, **self.kwargs, **worker_kwargs)


class Worker:
    """Per-process runner of tasks; one instance per worker process for the whole run.

    Hooks, in the order they run: `init` once before the first task (default: call
    ``worker_init(self)`` and keep its result in `resource`), `run_task` for every task
    (default: ``task()``), `cleanup` once at shutdown.

    Attributes: ``worker_idx`` (0..num_workers-1), ``num_workers``, ``attributes`` (the
    mapper's ``worker_attributes`` dict, e.g. ``{"devices": [0, 1]}``), ``mapper_attributes``
    (the mapper's own extra keywords, wepy's convention: ``device_ids=[0, 1], platform="CUDA"``),
    ``resource``.
    """

    def __init__(
        self,
        worker_idx: int,
        num_workers: int,
        attributes: Mapping[str, Any] | None = None,
        worker_init: Callable[[Worker], Any] | None = None,
    ) -> None:
        self.worker_idx = worker_idx
        self.num_workers = num_workers
        self.attributes: dict[str, Any] = dict(attributes or {})
        self.worker_init = worker_init
        self.resource: Any = None
        self.pid = os.getpid()
        #: the mapper's extra constructor keywords (set by the mapper's `WorkerFactory`)
        self.mapper_attributes: dict[str, Any] = {}

    def init(self) -> None:
        """Build per-worker resources once (override, or pass ``worker_init``)."""
        if self.worker_init is not None:
            self.resource = self.worker_init(self)

    def run_task(self, task: Task) -> Any:
        """Run one task; override to inject per-worker keyword arguments."""
        return task()

    def cleanup(self) -> None:
        """Release per-worker resources at shutdown (override if needed)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(worker_idx={self.worker_idx}, pid={self.pid})"


class WorkerFactory:
    """Makes a mapper's worker in its process: a `Worker` subclass, or one of wepy's workers.

    A picklable callable with `Worker`'s own signature, so every mapper builds workers one way
    and the mapper's ``mapper_attributes`` reach each of them.
    """

    def __init__(self, worker_type: type | None, mapper_attributes: Mapping[str, Any] | None = None) -> None:
        from .wepy_compat import is_wepy_worker_type

        worker_type = Worker if worker_type is None else worker_type
        self.wepy = is_wepy_worker_type(worker_type)
        if not self.wepy and not (isinstance(worker_type, type) and issubclass(worker_type, Worker)):
            hint = " (a function: did you mean segment_func=...?)" if callable(worker_type) else ""
            raise TypeError(
                f"worker_type must be a subclass of wemap.Worker or of wepy's Worker "
                f"(wepy.work_mapper.worker.Worker), got {worker_type!r}{hint}"
            )
        self.worker_type = worker_type
        self.mapper_attributes = dict(mapper_attributes or {})

    def __call__(
        self,
        worker_idx: int,
        num_workers: int,
        attributes: Mapping[str, Any] | None = None,
        worker_init: Callable[[Worker], Any] | None = None,
    ) -> Worker:
        if self.wepy:
            from .wepy_compat import WepyWorker

            worker: Worker = WepyWorker(self.worker_type, worker_idx, num_workers, attributes, worker_init)
        else:
            worker = self.worker_type(worker_idx, num_workers, attributes, worker_init)
        worker.mapper_attributes = dict(self.mapper_attributes)
        return worker

    def __repr__(self) -> str:
        return f"WorkerFactory({self.worker_type.__module__}.{self.worker_type.__qualname__})"


@dataclass(frozen=True)
class TaskFailure:
    """A segment's exception, reduced to what can cross a process boundary safely."""

    exc_type: str
    exc_message: str
    traceback: str
    retryable: bool = False  # the user listed this exception type in ``retry_on``

    @classmethod
    def capture(cls, exc: BaseException, retry_on: tuple[type[BaseException], ...] = ()) -> TaskFailure:
        return cls(
            exc_type=type(exc).__qualname__,
            exc_message=str(exc),
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            retryable=bool(retry_on) and isinstance(exc, retry_on),
        )

    def to_exception(
        self, *, walker_idx: int | None, cycle_idx: int | None, worker_idx: int | None, pid: int | None
    ) -> TaskException:
        where = f"walker {walker_idx}, cycle {cycle_idx}, worker {worker_idx} (pid {pid})"
        return TaskException(
            f"segment function raised {self.exc_type}: {self.exc_message} [{where}]",
            exc_type=self.exc_type, exc_message=self.exc_message, traceback=self.traceback,
            walker_idx=walker_idx, cycle_idx=cycle_idx, worker_idx=worker_idx, pid=pid,
        )


#: attribute set on the exception a signal handler of the manager raises while a ``map`` runs
#: (Ctrl-C's KeyboardInterrupt, SIGTERM's SystemExit): it is the user's, not the segment's
SIGNAL_MARK = "_wemap_from_signal"


def from_signal(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by the manager's signal handler rather than by a segment."""
    return getattr(exc, SIGNAL_MARK, False)


def run_timed(
    worker: Worker, task: Task, retry_on: tuple[type[BaseException], ...] = ()
) -> tuple[bool, Any, float, int, int]:
    """Run ``task`` on ``worker``; return (ok, result or TaskFailure, seconds, t_start_ns, t_end_ns).

    Whatever the segment raises is its failure, ``sys.exit()`` included, except an exception a
    signal handler raised (`from_signal`: Ctrl-C or SIGTERM under `wemap.Mapper`): that stops the map.
    """
    previous = _set_current(worker)
    t0 = time.monotonic_ns()
    try:
        result = worker.run_task(task)
        ok = True
    except BaseException as exc:
        if from_signal(exc):
            raise
        result = TaskFailure.capture(exc, retry_on)
        ok = False
    finally:
        _set_current(previous)
    t1 = time.monotonic_ns()
    return ok, result, (t1 - t0) * 1e-9, t0, t1
