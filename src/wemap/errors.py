"""Exceptions every part of wemap raises; this module imports nothing of ours."""

from __future__ import annotations

__all__ = [
    "WemapError",
    "TaskException",
    "WorkerException",
    "TaskTimeout",
    "RingCorruptError",
    "ShmSpaceError",
]


class WemapError(Exception):
    """Base class of wemap's own errors."""


class TaskException(WemapError):
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

    def __str__(self) -> str:
        base = super().__str__()
        if self.traceback:
            return f"{base}\n\nTraceback in the worker:\n{self.traceback.rstrip()}"
        return base

    def __reduce__(self):
        return (
            _rebuild_task_exception,
            (
                self.args[0] if self.args else "",
                self.exc_type,
                self.exc_message,
                self.traceback,
                self.walker_idx,
                self.cycle_idx,
                self.worker_idx,
                self.pid,
            ),
        )


def _rebuild_task_exception(message, exc_type, exc_message, tb, walker_idx, cycle_idx, worker_idx, pid):
    return TaskException(
        message,
        exc_type=exc_type,
        exc_message=exc_message,
        traceback=tb,
        walker_idx=walker_idx,
        cycle_idx=cycle_idx,
        worker_idx=worker_idx,
        pid=pid,
    )


class WorkerException(WemapError):
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


class TaskTimeout(WorkerException):
    """A segment ran past ``task_timeout`` more often than ``max_retries`` allows."""


class RingCorruptError(WemapError, ValueError):
    """A shared-memory segment's header does not describe a wemap ring we can use."""


class ShmSpaceError(WemapError, MemoryError):
    """The shared-memory filesystem (``/dev/shm``) has no room for the segment."""
