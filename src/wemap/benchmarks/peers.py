"""The peers a user would pick instead of wemap, behind the same ``init``/``map``/``cleanup`` calls.

- wepy's ``WorkerMapper`` (the reference wemap replaces): used as shipped.
- Ray: one actor per worker; every walker goes into Ray's shared-memory object store with
  ``ray.put`` and the actor's result comes back through the store too (``ray.get`` hands
  back read-only numpy views of it, Ray's default). Calls are dealt round-robin and all
  submitted at once, which is the fastest schedule for equal segments.
- ``concurrent.futures.ProcessPoolExecutor`` (standard library) on a forkserver context:
  walkers travel as pickles, like `wemap.WorkerMapper`.

Ray is started once per run (`ensure_ray`, on loopback, no dashboard) and stopped by
`shutdown_ray`; each mapper kills its own actors in ``cleanup``.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

__all__ = ["RayActorMapper", "ProcessPoolMapper", "WepyWorkerMapper", "wepy_worker_mapper", "ensure_ray",
           "shutdown_ray"]

logger = logging.getLogger(__name__)

_ray_started_here = False


def ensure_ray(num_cpus: int) -> None:
    """Start a local Ray runtime for this process (once), on loopback and without a dashboard."""
    global _ray_started_here
    import ray

    if ray.is_initialized():
        return
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    _ray_started_here = True
    logger.info("Ray started: %s", ray.cluster_resources())


def shutdown_ray() -> None:
    """Stop the Ray runtime if `ensure_ray` started it."""
    global _ray_started_here
    if not _ray_started_here:
        return
    import ray

    ray.shutdown()
    _ray_started_here = False


class _SegmentActor:
    """A Ray actor that runs the segment function on walkers it gets from the object store."""

    def __init__(self, segment_func: Callable[..., Any]) -> None:
        self.segment_func = segment_func

    def ready(self) -> bool:
        return True

    def run(self, walker: Any, segment_length: Any) -> Any:
        return self.segment_func(walker, segment_length)


class RayActorMapper:
    """One Ray actor per worker fed through Ray's shared-memory object store."""

    def __init__(self, num_workers: int | None = None, segment_func: Callable[..., Any] | None = None,
                 num_cpus: int | None = None) -> None:
        self.num_workers = num_workers
        self.segment_func = segment_func
        self.num_cpus = num_cpus
        self._actors: list[Any] = []

    def init(self, segment_func: Callable[..., Any] | None = None, num_workers: int | None = None, **kw: Any) -> None:
        import ray

        self.segment_func = segment_func or self.segment_func
        self.num_workers = num_workers or self.num_workers or 1
        ensure_ray(self.num_cpus or os.cpu_count() or 1)
        # num_cpus=0: the actors never wait for CPU slots, whatever the worker count asked for
        actor_cls = ray.remote(num_cpus=0)(_SegmentActor)
        self._actors = [actor_cls.remote(self.segment_func) for _ in range(self.num_workers)]
        ray.get([a.ready.remote() for a in self._actors])

    def map(self, walkers: Any, segment_lengths: Any) -> list[Any]:
        import ray

        refs = [ray.put(w) for w in walkers]
        n = len(self._actors)
        futures = [self._actors[i % n].run.remote(ref, length)
                   for i, (ref, length) in enumerate(zip(refs, segment_lengths))]
        return ray.get(futures)

    def cleanup(self, **kw: Any) -> None:
        if not self._actors:
            return
        import ray

        for a in self._actors:
            ray.kill(a)
        self._actors = []


class ProcessPoolMapper:
    """``ProcessPoolExecutor.map`` over the walkers on a forkserver (non-fork) context."""

    def __init__(self, num_workers: int | None = None, segment_func: Callable[..., Any] | None = None,
                 start_method: str | None = None) -> None:
        self.num_workers = num_workers
        self.segment_func = segment_func
        methods = mp.get_all_start_methods()
        self.start_method = start_method or ("forkserver" if "forkserver" in methods else "spawn")
        self._pool: ProcessPoolExecutor | None = None

    def init(self, segment_func: Callable[..., Any] | None = None, num_workers: int | None = None, **kw: Any) -> None:
        self.segment_func = segment_func or self.segment_func
        self.num_workers = num_workers or self.num_workers or 1
        self._pool = ProcessPoolExecutor(max_workers=self.num_workers, mp_context=mp.get_context(self.start_method))

    def map(self, *args: Any) -> list[Any]:
        assert self._pool is not None and self.segment_func is not None, "call init() first"
        return list(self._pool.map(self.segment_func, *args))

    def cleanup(self, **kw: Any) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class WepyWorkerMapper:
    """wepy's ``WorkerMapper`` with its plain ``Worker``, as wepy's own examples build it.

    Every call goes straight to wepy's mapper; the adapter only tidies up after it, so one
    cell's leftovers do not count in the next: wepy's ``cleanup`` leaves its workers unjoined
    and its queue-manager process running, and its ``init`` installs a SIGTERM handler in the
    calling process.
    """

    def __init__(self, num_workers: int | None = None, segment_func: Callable[..., Any] | None = None) -> None:
        from wepy.work_mapper.mapper import Worker, WorkerMapper

        self.mapper = WorkerMapper(num_workers=num_workers, segment_func=segment_func, worker_type=Worker)
        self._sigterm: Any = None

    def init(self, segment_func: Callable[..., Any] | None = None, num_workers: int | None = None, **kw: Any) -> None:
        self._sigterm = signal.getsignal(signal.SIGTERM)
        self.mapper.init(segment_func=segment_func, num_workers=num_workers)

    def map(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self.mapper.map(*args, **kwargs)

    @property
    def worker_segment_times(self) -> dict[int, list[float]]:
        return self.mapper.worker_segment_times

    def cleanup(self, **kw: Any) -> None:
        workers = list(getattr(self.mapper, "_workers", None) or [])
        queue = getattr(self.mapper, "_exception_queue", None)
        manager = getattr(queue, "_manager", None)
        try:
            self.mapper.cleanup()
        finally:
            for w in workers:
                w.join(timeout=5)
            if manager is not None:
                manager.shutdown()
            if self._sigterm is not None:
                signal.signal(signal.SIGTERM, self._sigterm)
                self._sigterm = None


def wepy_worker_mapper(num_workers: int, segment_func: Callable[..., Any]) -> WepyWorkerMapper:
    """wepy's ``WorkerMapper`` (see `WepyWorkerMapper`)."""
    return WepyWorkerMapper(num_workers=num_workers, segment_func=segment_func)
