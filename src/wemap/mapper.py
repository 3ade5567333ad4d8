"""`Mapper`, the reference for-loop mapper, and what every mapper shares: `MapperBase` (the
lifecycle and the `map()` argument handling) and `PoolMapper` (the process mappers' options).

The interface (from wepy's work-mapper specification): ``init(segment_func=..., num_workers=...)``
once, then ``map(*iterables, **iterables)`` per cycle, then ``cleanup()``; results come back
in input order and ``worker_segment_times`` holds ``{worker_idx: [seconds, ...]}`` for the
last cycle only.
"""

from __future__ import annotations

import atexit
import copy
import difflib
import inspect
import logging
import multiprocessing as mp
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from .faults import Attempts, RetryPolicy, sigterm_raises
from .pickling import check_sent
from .pool import WorkerPool, default_start_method
from .worker import Task, Worker, WorkerFactory, run_timed

__all__ = ["Mapper", "MapperBase", "PoolMapper", "TaskSpec"]

logger = logging.getLogger(__name__)


class TaskSpec(NamedTuple):
    """One walker's call: its position in the input, arguments, and where it is (for errors).

    A named tuple, not a frozen dataclass: one is made per walker per cycle.
    """

    task_idx: int
    args: tuple
    kwargs: dict
    walker_idx: int
    cycle_idx: int


def _materialise(name: str, value: Any) -> list:
    if type(value) is list:  # what every caller passes: no copy, no ABC checks
        return value
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(
            f"map() argument {name} must be an iterable with one element per walker, "
            f"got {type(value).__name__}"
        )
    return list(value)


def prepare_tasks(args: tuple, kwargs: dict, default_cycle: int) -> list[TaskSpec]:
    """Expand per-walker iterables (lists or generators) into one `TaskSpec` per walker.

    Raises ``ValueError`` naming the arguments when their lengths differ, before any work starts.
    """
    if not args and not kwargs:
        raise TypeError("map() needs at least one iterable argument (one element per walker)")
    if not kwargs and all(type(a) is list for a in args) and len({len(a) for a in args}) == 1:
        # what a WE loop passes (walkers, segment lengths): the general path's checks, per walker, cost more
        return [TaskSpec(i, row, {}, i, default_cycle) for i, row in enumerate(zip(*args))]
    pos = [_materialise(f"#{i} (positional)", a) for i, a in enumerate(args)]
    kw = {k: _materialise(repr(k), v) for k, v in kwargs.items()}
    lengths = {f"#{i}": len(col) for i, col in enumerate(pos)}
    lengths.update({repr(k): len(col) for k, col in kw.items()})
    if len(set(lengths.values())) > 1:
        listing = ", ".join(f"{name}: {n}" for name, n in lengths.items())
        raise ValueError(f"map() arguments have different lengths (one element per walker expected): {listing}")
    n = next(iter(lengths.values()))
    rows = list(zip(*pos)) if pos else [()] * n
    names = tuple(kw)
    calls = [dict(zip(names, values)) for values in zip(*kw.values())] if kw else [{} for _ in range(n)]
    return [
        TaskSpec(i, row, call, _as_int(call.get("walker_idx"), i), _as_int(call.get("cycle_idx"), default_cycle))
        for i, row, call in zip(range(n), rows, calls)
    ]


def _as_int(value: Any, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _warn_near_misses(cls: type, attributes: Mapping[str, Any]) -> None:
    """Warn when an extra keyword looks like a misspelt parameter: it would silently become an attribute."""
    known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "mapper_attributes")]
    # the user's line: past this function and each constructor from cls's down to MapperBase's
    constructors = sum("__init__" in vars(c) for c in cls.__mro__[:cls.__mro__.index(MapperBase) + 1])
    for key in attributes:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if close:
            warnings.warn(
                f"{cls.__name__}: unknown keyword {key!r} is kept as a mapper attribute (as wepy does); "
                f"did you mean {close[0]!r}?",
                UserWarning,
                stacklevel=2 + constructors,
            )


#: mappers started and not yet cleaned up: cleaned up at interpreter exit (a script that never
#: calls ``cleanup()``), so no worker, no segment and no warning outlives the manager
_RUNNING: weakref.WeakSet[MapperBase] = weakref.WeakSet()
#: mappers inside ``map`` now, each at most once (checked and added under ``_MAP_GUARD``)
_MAPPING: weakref.WeakSet[MapperBase] = weakref.WeakSet()
_MAP_GUARD = threading.Lock()


@atexit.register
def _cleanup_running_mappers() -> None:
    for mapper in list(_RUNNING):
        try:
            mapper.cleanup()
        except Exception as exc:
            logger.warning("cleaning up %s at exit failed: %s", type(mapper).__name__, exc)


class MapperBase:
    """The state machine and bookkeeping every wemap mapper shares.

    ``init`` → ``map``* → ``cleanup`` (idempotent; ``init`` may follow it again). Subclasses
    implement `_start`, `_dispatch` and `_stop`; a ``map`` that fails ends the mapper (`_abort`), so
    no process is left behind and ``cleanup()`` stays safe to call. The constructor is wepy's
    ``Mapper``'s: ``segment_func`` the only positional argument, extra keywords kept in `attributes`.
    """

    #: segments run in this process, so a KeyboardInterrupt may be theirs (`faults.sigterm_raises`)
    _segments_here = False

    def __init__(
        self,
        segment_func: Callable[..., Any] | None = None,
        *,
        num_workers: int | None = None,
        worker_type: type | None = None,
        worker_attributes: Mapping[str, Any] | None = None,
        worker_init: Callable[[Worker], Any] | None = None,
        max_retries: int = 2,
        retry_on: tuple[type[BaseException], ...] = (),
        task_timeout: float | None = None,
        first_task_timeout: float | None = None,
        **mapper_attributes: Any,
    ) -> None:
        self.segment_func = segment_func
        self._num_workers = num_workers
        #: builds each worker in its process (a `Worker` subclass or one of wepy's workers)
        self.worker_factory = WorkerFactory(worker_type, mapper_attributes)
        self.worker_attributes: dict[str, Any] = dict(worker_attributes or {})
        self.worker_init = worker_init
        #: the constructor's extra keywords, as wepy keeps them; every worker sees them as
        #: ``mapper_attributes`` (wepy's GPU worker reads ``device_ids`` and ``platform`` there)
        self.attributes: dict[str, Any] = dict(mapper_attributes or {})
        _warn_near_misses(type(self), self.attributes)
        self._worker_segment_times: dict[int, list[float]] = {}
        self.policy = RetryPolicy(max_retries, tuple(retry_on), task_timeout, first_task_timeout)
        self._state = "new"
        self._cycle_counter = 0
        #: walkers re-run after a lost segment or a retried exception, over the mapper's life
        self.recovered_segments = 0

    # -- interface ---------------------------------------------------------------------------
    @property
    def num_workers(self) -> int | None:
        return self._num_workers

    @property
    def worker_type(self) -> type:
        """The class each worker is made of (`Worker` when none was given); read-only, as in wepy."""
        return self.worker_factory.worker_type

    @property
    def worker_segment_times(self) -> dict[int, list[float]]:
        """``{worker_idx: [seconds per segment]}`` for the last `map` call; idle workers map to ``[]``."""
        return self._worker_segment_times

    def init(
        self, segment_func: Callable[..., Any] | None = None, num_workers: int | None = None, **kwargs: Any
    ) -> None:
        """Start the mapper (processes, segments); called once before the first cycle."""
        if self._state == "running":
            raise RuntimeError(f"{type(self).__name__}.init() called twice; call cleanup() before init() again")
        if getattr(sys.modules.get("__main__"), "__name__", None) == "__mp_main__":
            raise RuntimeError(
                f"{type(self).__name__}.init() was called while a worker process was importing your main "
                f"script (worker processes start with forkserver or spawn and import it): create and start "
                f"mappers under `if __name__ == '__main__':`"
            )
        if segment_func is not None:
            self.segment_func = segment_func
        if self.segment_func is None:
            raise ValueError(f"{type(self).__name__}.init() needs segment_func (here or in the constructor)")
        if not callable(self.segment_func):
            raise TypeError(f"segment_func must be callable, got {type(self.segment_func).__name__}")
        if num_workers is not None:
            self._num_workers = num_workers
        if self._num_workers is None:
            self._num_workers = self._default_num_workers()
        if not isinstance(self._num_workers, int) or self._num_workers < 1:
            raise ValueError(f"num_workers must be a positive integer, got {self._num_workers!r}")
        self._worker_segment_times = {i: [] for i in range(self._worker_count())}
        self._start()
        self._state = "running"
        _RUNNING.add(self)
        logger.debug("%s started with %d worker(s)", type(self).__name__, self._worker_count())

    def map(self, *args: Iterable[Any], **kwargs: Iterable[Any]) -> list[Any]:
        """Apply ``segment_func`` to each walker's arguments; results in input order.

        One ``map`` at a time per mapper: a call made while another ``map`` of the same mapper runs
        (in another thread, or from inside a segment) raises ``RuntimeError`` at once and touches
        nothing, and the running one goes on. Threads that map at the same time need a mapper each.
        """
        with _MAP_GUARD:
            if self in _MAPPING:
                raise RuntimeError(
                    f"{type(self).__name__}.map() called while another map() of this mapper is running: a mapper "
                    f"runs one map() at a time; use a separate mapper for each thread that maps at the same time"
                )
            _MAPPING.add(self)
        try:
            name = type(self).__name__
            if self._state == "new":
                raise RuntimeError(f"{name}.map() called before init(); call init(segment_func=...) first")
            if self._state == "closed":
                raise RuntimeError(f"{name}.map() called after cleanup(); call init() again to restart it")
            specs = prepare_tasks(args, kwargs, self._cycle_counter)
            self._cycle_counter += 1
            self._worker_segment_times = {i: [] for i in range(self._worker_count())}
            if not specs:
                return []
            with sigterm_raises(self._segments_here):
                return self._run(specs)
        finally:
            _MAPPING.discard(self)

    def cleanup(self, **kwargs: Any) -> None:
        """End every process and free every segment; safe to call twice and after errors."""
        _RUNNING.discard(self)
        was, self._state = self._state, "closed"
        if was == "running":
            self._stop(abort=False)

    def _abort(self) -> None:
        """Stop at once after a failed ``map``: workers still mid-segment are not waited for."""
        _RUNNING.discard(self)
        if self._state == "running":
            self._state = "closed"
            self._stop(abort=True)

    def __del__(self) -> None:
        # a mapper dropped while running (never cleaned up): its workers and shared memory go with it
        if getattr(self, "_state", None) == "running":
            try:
                self.cleanup()
            except Exception as exc:  # nothing may escape a finaliser; say what was left
                logger.warning("%s dropped without cleanup(); cleaning up failed: %s", type(self).__name__, exc)

    def __enter__(self):
        if self._state != "running":
            self.init()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()

    # -- for subclasses ----------------------------------------------------------------------
    def _default_num_workers(self) -> int:
        return os.cpu_count() or 1

    def _worker_count(self) -> int:
        return int(self._num_workers or 1)

    def _start(self) -> None:
        raise NotImplementedError

    def _run(self, specs: list[TaskSpec]) -> list[Any]:
        try:
            return self._dispatch(specs)
        except BaseException:
            self._abort()
            raise

    def _dispatch(self, specs: list[TaskSpec]) -> list[Any]:
        raise NotImplementedError

    def _stop(self, abort: bool) -> None:
        raise NotImplementedError


class Mapper(MapperBase):
    """Reference mapper: a plain for-loop in the calling process.

    Same interface, timing dict (``{0: [...]}``) and `TaskException` as the process mappers;
    use it for debugging, small systems and as the ground truth in tests. Its constructor is
    `MapperBase`'s (wepy's ``Mapper``'s); ``num_workers`` is accepted so wepy's ``Configuration``
    can build it, and ignored (one worker, this process).
    """

    _segments_here = True

    def _default_num_workers(self) -> int:
        return 1

    def _worker_count(self) -> int:
        return 1

    def _start(self) -> None:
        self._worker = self.worker_factory(0, 1, self.worker_attributes, self.worker_init)
        self._worker.init()

    def _run(self, specs: list[TaskSpec]) -> list[Any]:
        # not MapperBase's: a failed walker leaves this mapper running, as wepy's Mapper does (nothing to end)
        results = []
        times = self._worker_segment_times[0]
        attempts = Attempts(self.policy)
        try:
            retry = bool(self.policy.retry_on)
            for spec in specs:
                while True:
                    # a retried attempt must see the walker as it was, not as a failed attempt left it
                    args, kwargs = copy.deepcopy((spec.args, spec.kwargs)) if retry else (spec.args, spec.kwargs)
                    task = Task(self.segment_func, *args, **kwargs)
                    ok, result, seconds, _, _ = run_timed(self._worker, task, self.policy.retry_on)
                    times.append(seconds)
                    if ok:
                        break
                    attempts.failed(
                        spec.task_idx, result,
                        walker_idx=spec.walker_idx, cycle_idx=spec.cycle_idx, worker_idx=0, pid=os.getpid(),
                    )
                results.append(result)
        finally:
            self.recovered_segments += attempts.recovered
        return results

    def _stop(self, abort: bool) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cleanup()


class PoolMapper(MapperBase):
    """A mapper whose workers are the processes of a `WorkerPool`; subclasses implement `_dispatch`.

    The constructor is wepy's ``WorkerMapper``'s (see `wemap.WorkerMapper`).
    """

    def __init__(
        self,
        num_workers: int | None = None,
        worker_type: type | None = None,
        worker_attributes: Mapping[str, Any] | None = None,
        segment_func: Callable[..., Any] | None = None,
        *,
        worker_init: Callable[[Worker], Any] | None = None,
        start_method: str | None = None,
        proc_start_method: str | None = None,
        start_timeout: float = 120.0,
        stop_timeout: float = 5.0,
        max_retries: int = 2,
        retry_on: tuple[type[BaseException], ...] = (),
        task_timeout: float | None = None,
        first_task_timeout: float | None = None,
        **mapper_attributes: Any,
    ) -> None:
        super().__init__(
            segment_func, num_workers=num_workers, worker_type=worker_type, worker_attributes=worker_attributes,
            worker_init=worker_init, max_retries=max_retries, retry_on=retry_on, task_timeout=task_timeout,
            first_task_timeout=first_task_timeout, **mapper_attributes,
        )
        if start_method is not None and proc_start_method is not None and start_method != proc_start_method:
            raise ValueError(f"start_method={start_method!r} and proc_start_method={proc_start_method!r} disagree; "
                             f"give one of them (proc_start_method is wepy's name for start_method)")
        method = start_method if start_method is not None else proc_start_method
        self.start_method = default_start_method() if method is None else method
        if self.start_method not in (available := mp.get_all_start_methods()):
            raise ValueError(f"start method {method!r} is not available here; choose one of {available}")
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout

    def _start_pool(self, loop: Callable[..., None], loop_args: tuple, **picklable: Any) -> WorkerPool:
        """Start the workers, each running ``loop(worker, conn, *loop_args)``, once ``picklable`` is checked."""
        pool = WorkerPool(
            self._worker_count(), loop, loop_args, worker_type=self.worker_factory,
            worker_attributes=self.worker_attributes, worker_init=self.worker_init, start_method=self.start_method,
            start_timeout=self.start_timeout, stop_timeout=self.stop_timeout,
        )
        if self.start_method != "fork":  # fork copies them; every other start method pickles them
            check_sent(self, f"the {self.start_method!r} start method sends it to every worker process", **picklable)
        pool.start()
        return pool
