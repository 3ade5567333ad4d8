"""Exceptions every part of wemap raises; this module imports nothing of ours.

With wepy installed, `TaskException` and `WorkerException` also subclass wepy's classes of the
same name (``wepy.work_mapper.mapper``), so a wepy script's ``except TaskException`` catches
wemap's too. wepy is looked up, not required: without it these are plain wemap exceptions.
"""

from __future__ import annotations

import logging

__all__ = ["WemapError", "TaskException", "WorkerException", "TaskTimeout", "RingCorruptError", "ShmSpaceError"]

logger = logging.getLogger(__name__)


def _wepy_bases() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """wepy's (TaskException,), (WorkerException,) when wepy is installed, else two empty tuples."""
    try:
        from wepy.work_mapper.mapper import TaskException as WepyTaskException
        from wepy.work_mapper.mapper import WorkerException as WepyWorkerException
    except Exception as exc:  # wepy missing, or a broken install, which must not break wemap
        logger.debug("wepy's exception classes not used: %s", exc)
        return (), ()
    return (WepyTaskException,), (WepyWorkerException,)


_WEPY_TASK, _WEPY_WORKER = _wepy_bases()


class WemapError(Exception):
    """Base class of wemap's own errors."""


class TaskException(WemapError, *_WEPY_TASK):
    """A segment function raised inside a worker.

    Carries what the manager needs to show the user the real failure: the original
    exception's type name and message, the worker's formatted traceback, and where it
    happened (walker index, cycle, worker index, worker pid).
    """

    def __init__(
        self,
        message: str,
        *,
        exc_type: str = "",
        exc_message: str = "",
        traceback: str = "",
        walker_idx: int | None = None,
        cycle_idx: int | None = None,
        worker_idx: int | None = None,
        pid: int | None = None,
    ) -> None:
        super().__init__(message)
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.traceback = traceback
        self.walker_idx = walker_idx
        self.cycle_idx = cycle_idx
        self.worker_idx = worker_idx
        self.pid = pid
        # wepy's WrapperException fields: the worker's exception cannot cross processes, its text can
        self.wrapped_exception = None
        self.formatted_tb = traceback.splitlines(keepends=True)

    def __str__(self) -> str:
        base = super().__str__()
        if self.traceback:
            return f"{base}\n\nTraceback in the worker:\n{self.traceback.rstrip()}"
        return base


class WorkerException(WemapError, *_WEPY_WORKER):
    """A worker process died or misbehaved (killed, crashed, exited, timed out).

    ``exitcode`` follows multiprocessing: negative for a signal (``-9`` is SIGKILL).
    """

    def __init__(
        self,
        message: str,
        *,
        worker_idx: int | None = None,
        pid: int | None = None,
        exitcode: int | None = None,
        walker_idx: int | None = None,
        cycle_idx: int | None = None,
    ) -> None:
        super().__init__(message)
        self.worker_idx = worker_idx
        self.pid = pid
        self.exitcode = exitcode
        self.walker_idx = walker_idx
        self.cycle_idx = cycle_idx
        self.wrapped_exception = None
        self.formatted_tb: list[str] = []


class TaskTimeout(WorkerException):
    """A segment ran past ``task_timeout`` more often than ``max_retries`` allows."""


class RingCorruptError(WemapError, ValueError):
    """A shared-memory segment's header does not describe a wemap ring we can use."""


class ShmSpaceError(WemapError, MemoryError):
    """The shared-memory filesystem (``/dev/shm``) has no room for the segment."""
