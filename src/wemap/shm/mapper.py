"""`SharedMemWorkerMapper`: walkers live in shared memory; slots carry only descriptors.

docs/architecture.md has the glossary and one walker's trip through the rings and the arena.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from ..codec import Codec, CodecRegistry
from ..mapper import PoolMapper, TaskSpec
from ..stale_segments import remove_stale_segments
from ..worker import Worker
from .cycle import Cycle
from .transport import Transport
from .worker_loop import ring_loop

__all__ = ["SharedMemWorkerMapper"]

logger = logging.getLogger(__name__)

#: keywords of earlier versions: every walker now takes the one path, so they have nothing to choose
GONE_KEYWORDS = ("zero_copy", "shared_results", "slot_size", "num_slots", "liveness_interval")


class SharedMemWorkerMapper(PoolMapper):
    """Persistent worker processes; walker arrays travel through shared memory, never pickled.

    Takes `WorkerMapper`'s arguments, in wepy's order, and ``codecs``: extra `Codec` objects
    tried before the built-ins (walker types of your own).

    Every array of a walker lives in a block of a shared-memory *arena*. A walker you made is
    copied into one once; a result comes back as writable arrays in the arena that are yours for
    as long as you keep them (the block is reused once nothing refers to it), and a result you
    map again (a WE loop, clones included) goes to the workers by reference, copied by nobody.
    The segment function receives read-only views of the walker's arrays (copy them before
    modifying them in place). Values that are neither arrays nor plain numbers and strings
    travel pickled over the worker's pipe.

    ``/dev/shm`` holds three blocks a walker (its input, its result, and the result of the last
    cycle you may still hold) and a small descriptor slot; when it cannot, the ``map`` that needs
    it raises `ShmSpaceError` naming the bytes and the fix, before any walker goes out.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        worker_type: type | None = None,
        worker_attributes: Mapping[str, Any] | None = None,
        segment_func: Callable[..., Any] | None = None,
        *,
        worker_init: Callable[[Worker], Any] | None = None,
        codecs: list[Codec] | tuple[Codec, ...] = (),
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
        gone = [k for k in GONE_KEYWORDS if k in mapper_attributes]
        if gone:
            warnings.warn(f"SharedMemWorkerMapper: {', '.join(gone)} no longer choose anything (every walker takes "
                          f"one path through shared memory) and are ignored; remove them", DeprecationWarning,
                          stacklevel=2)
        super().__init__(
            num_workers, worker_type, worker_attributes, segment_func, worker_init=worker_init,
            start_method=start_method, proc_start_method=proc_start_method, start_timeout=start_timeout,
            stop_timeout=stop_timeout, max_retries=max_retries, retry_on=retry_on, task_timeout=task_timeout,
            first_task_timeout=first_task_timeout, **{k: v for k, v in mapper_attributes.items() if k not in gone},
        )
        self.codecs = tuple(codecs)
        self._registry = CodecRegistry(self.codecs)
        self._transport: Transport | None = None

    @property
    def segment_name(self) -> str | None:
        """Name of the current ring's shared-memory segment (under ``/dev/shm`` on Linux), if any."""
        t = self._transport
        return t.segment.name if t is not None and t.segment is not None else None

    @property
    def arena_name(self) -> str | None:
        """Name of the current arena's shared-memory segment, if any."""
        t = self._transport
        return t.arena.name if t is not None and t.arena is not None else None

    def _start(self) -> None:
        for name in remove_stale_segments():
            logger.warning("removed stale segment %s left by a dead process", name)
        pool = self._start_pool(ring_loop, (self.segment_func, self.codecs, self.policy.retry_on), codecs=self.codecs)
        try:
            self._transport = Transport(pool, self._registry, self.policy)
        except BaseException:
            pool.stop(self.stop_timeout)
            raise

    def _stop(self, abort: bool) -> None:
        t, self._transport = self._transport, None
        if t is not None:
            t.stop(abort, self.stop_timeout)

    def _dispatch(self, specs: list[TaskSpec]) -> list[Any]:
        cycle = Cycle(self._transport, specs, self._worker_segment_times)
        try:
            return cycle.run()
        finally:
            self.recovered_segments += cycle.attempts.recovered
