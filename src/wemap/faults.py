"""What a mapper does when a walker's segment is lost: retry it, or give up with a named error.

A *lost* segment is one whose worker died (SIGKILL, OOM kill, segfault, ``os._exit``) or ran
past ``task_timeout``: the walker's input is intact, so it is run again on a fresh worker, up
to ``max_retries`` times. A segment that *raises* is a bug, not a fault: `TaskException` at
once, unless its exception type is listed in ``retry_on``.
"""

from __future__ import annotations

import logging
import math
import numbers
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import TaskTimeout, WorkerException
from .worker import SIGNAL_MARK, TaskFailure

__all__ = ["RetryPolicy", "Attempts", "sigterm_raises", "check_seconds"]

logger = logging.getLogger(__name__)


def check_seconds(name: str, value: object, *, zero: bool = False, infinite: bool = True) -> float:
    """``value`` as seconds (a real number, not a bool or nan), or an error naming parameter ``name``.

    Positive, or ``>= 0`` with ``zero``; ``inf`` (no limit) only with ``infinite``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds (int or float), got {type(value).__name__} {value!r}")
    seconds = float(value)
    if math.isnan(seconds):
        raise ValueError(f"{name} must be a number of seconds, got nan")
    if seconds < 0 or (seconds == 0 and not zero):
        raise ValueError(f"{name} must be {'>= 0' if zero else 'positive'} (seconds), got {value!r}")
    if math.isinf(seconds) and not infinite:
        raise ValueError(f"{name} must be finite, got {value!r}")
    return seconds


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` re-runs per walker per cycle; ``task_timeout`` seconds per segment.

    A worker's first segment also builds its engine state (an OpenMM ``Context`` can take
    minutes for a large system), so it gets ``first_task_timeout`` instead (default: ten
    times ``task_timeout``). A timeout of ``None`` or ``inf`` is no limit; nan, zero, negative
    or non-numeric values are refused, naming the parameter.
    """

    max_retries: int = 2
    retry_on: tuple[type[BaseException], ...] = ()
    task_timeout: float | None = None
    first_task_timeout: float | None = None

    def __post_init__(self) -> None:
        n = self.max_retries
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise TypeError(f"max_retries must be an int, got {type(n).__name__} {n!r}")
        if n < 0:
            raise ValueError(f"max_retries must be >= 0, got {n}")
        object.__setattr__(self, "max_retries", int(n))
        for name in ("task_timeout", "first_task_timeout"):
            t = getattr(self, name)
            if t is not None:
                object.__setattr__(self, name, check_seconds(name, t))
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in self.retry_on):
            raise TypeError(f"retry_on must be a tuple of exception types, got {self.retry_on!r}")

    def timeout_for(self, first_segment: bool) -> float | None:
        """Seconds a segment may run (a worker's first, or a later one); ``None``: no limit."""
        limit = self.task_timeout
        if first_segment and self.first_task_timeout is not None:
            limit = self.first_task_timeout
        elif first_segment and limit is not None:
            limit *= 10
        return None if limit is None or math.isinf(limit) else limit


class Attempts:
    """Counts each walker's lost or retried runs in one ``map`` call and decides retry vs error."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.counts: Counter[int] = Counter()
        self.recovered = 0

    def lost(
        self,
        task_idx: int,
        *,
        walker_idx: int,
        cycle_idx: int,
        worker: str,
        worker_idx: int,
        pid: int,
        exitcode: int | None,
        reason: str,
        timed_out: bool = False,
    ) -> None:
        """Record a lost run; return to re-run it, or raise once retries are spent."""
        self.counts[task_idx] += 1
        n = self.counts[task_idx]
        where = f"walker {walker_idx} of cycle {cycle_idx}"
        if n > self.policy.max_retries:
            cls = TaskTimeout if timed_out else WorkerException
            raise cls(
                f"{where} was lost {n} time(s), more than max_retries={self.policy.max_retries}; "
                f"last: {worker} {reason}",
                worker_idx=worker_idx,
                pid=pid,
                exitcode=exitcode,
                walker_idx=walker_idx,
                cycle_idx=cycle_idx,
            )
        self.recovered += 1
        logger.warning("%s %s while running %s; re-running it (attempt %d of %d)",
                       worker, reason, where, n + 1, self.policy.max_retries + 1)

    def failed(self, task_idx: int, failure: TaskFailure, **where) -> None:
        """A segment raised: return to retry it (opted in with ``retry_on``), else raise TaskException."""
        if failure.retryable and self.counts[task_idx] < self.policy.max_retries:
            self.counts[task_idx] += 1
            self.recovered += 1
            logger.warning("walker %s of cycle %s raised %s (in retry_on); re-running it",
                           where.get("walker_idx"), where.get("cycle_idx"), failure.exc_type)
            return
        raise failure.to_exception(**where)


class _Terminated(SystemExit):
    """SIGTERM during ``map``: unwinds like ``sys.exit`` so the mapper's cleanup runs."""


@contextmanager
def sigterm_raises(mark_sigint: bool = False) -> Iterator[None]:
    """While a ``map`` runs (main thread, default handlers only): SIGTERM raises, marked as the
    signal's (`worker.from_signal`), and with ``mark_sigint`` so does Ctrl-C's KeyboardInterrupt.

    Otherwise SIGTERM kills the manager with no cleanup. The mark lets `wemap.Mapper`, whose segments
    run in the manager, stop the map on a signal, while a ``KeyboardInterrupt`` or ``SystemExit`` a
    segment raises itself is its failure (`TaskException`); where segments run in other processes a
    KeyboardInterrupt in the manager is always Ctrl-C's, and SIGINT keeps Python's own handler. A
    user's own handler is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    defaults = {signal.SIGTERM: signal.SIG_DFL}
    if mark_sigint:
        defaults[signal.SIGINT] = signal.default_int_handler
    ours = [signum for signum, default in defaults.items() if signal.getsignal(signum) == default]
    for signum in ours:
        signal.signal(signum, _raise_marked)
    try:
        yield
    finally:
        for signum in ours:
            signal.signal(signum, defaults[signum])


def _raise_marked(signum, frame):
    if signum == signal.SIGTERM:
        logger.error("SIGTERM received during map(): stopping workers and freeing shared memory")
        exc: BaseException = _Terminated(128 + signum)
    else:
        exc = KeyboardInterrupt()  # the type Python's own handler raises
    setattr(exc, SIGNAL_MARK, True)
    raise exc
