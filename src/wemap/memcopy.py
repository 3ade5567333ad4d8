"""Copy large arrays with a few threads: one thread cannot saturate memory bandwidth.

numpy releases the GIL inside ``copyto``, so splitting a large copy into row blocks on a
small shared thread pool moves the bytes (and takes the page faults of freshly allocated
output) in parallel. Small arrays are copied inline: a thread handoff costs more than
they do.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["copy_into", "copy_of", "BlockPool", "ReusableMemory", "idle_from", "PARALLEL_MIN_BYTES"]

#: arrays smaller than this are copied by the calling thread
PARALLEL_MIN_BYTES = 4 * 2**20
_MAX_THREADS = 4

_UINT8 = np.dtype(np.uint8)

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_lock = threading.Lock()


def _threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(_MAX_THREADS, n))


def _executor() -> ThreadPoolExecutor | None:
    global _pool, _pool_pid
    if _threads() < 2:
        return None
    with _lock:
        if _pool is None or _pool_pid != os.getpid():  # a pool does not survive fork
            _pool = ThreadPoolExecutor(_threads(), thread_name_prefix="wemap-copy")
            _pool_pid = os.getpid()
        return _pool


def copy_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``np.copyto(dst, src)`` (same shape and dtype), in parallel row blocks when large."""
    pool = _executor() if src.nbytes >= PARALLEL_MIN_BYTES and src.ndim >= 1 and len(src) >= 2 else None
    if pool is None:
        np.copyto(dst, src, casting="no")
        return
    n = _threads()
    bounds = np.linspace(0, len(src), n + 1, dtype=np.int64)
    futures = [
        pool.submit(np.copyto, dst[a:b], src[a:b], casting="no")
        for a, b in zip(bounds[:-1], bounds[1:])
        if b > a
    ]
    for f in futures:
        f.result()


def copy_of(src: np.ndarray) -> np.ndarray:
    """A private copy of ``src``; large ones are faulted in and filled by several threads."""
    if src.nbytes < PARALLEL_MIN_BYTES:
        return src.copy()
    dst = np.empty_like(src, order="C")
    copy_into(dst, src)
    return dst


class ReusableMemory:
    """Memory handed out as a new uint8 array each time, reusable once nothing refers to that array.

    The array is made over a memoryview, so it is not a view of another array and numpy makes
    it the ``base`` of every view carved from it; a weak reference to it dies with the last
    such view. (Reference counts would tell too, but what they count changes between Pythons.)
    """

    __slots__ = ("memory", "_handed")

    def __init__(self, memory: memoryview) -> None:
        self.memory = memory
        self._handed: weakref.ref | None = None

    def idle(self) -> bool:
        return self._handed is None or self._handed() is None

    def hand_out(self) -> np.ndarray:
        array = np.frombuffer(self.memory, _UINT8)  # positional: keywords cost half as much again
        self._handed = weakref.ref(array)
        return array


def idle_from(blocks: list[ReusableMemory], start: int) -> Iterator[int]:
    """Indices of the idle ``blocks``, looking from ``start`` round to just before it, once.

    Blocks are handed out in turn, so the ones free again (two cycles old in a WE loop) lie just
    past the last one taken: starting there, a cycle's takes cost about one check each instead of
    a scan from the first block for every walker (quadratic: 0.2 s a cycle at 1,000 walkers).
    """
    count = len(blocks)
    if start >= count:
        start = start % count if count else 0
    for step in range(count):
        k = start + step
        if k >= count:
            k -= count
        if blocks[k].idle():
            yield k


class BlockPool:
    """Reusable memory for result walkers, so a steady WE loop stops paying page faults.

    Copying a result out of shared memory into freshly allocated arrays costs about as much
    again as the copy itself: glibc hands large freed blocks back to the kernel, and the next
    cycle faults and zeroes them anew. Each result walker's arrays are instead carved from one
    block (a `ReusableMemory`), handed out again once nothing refers to any array of it. One
    block per walker bounds what a kept array can pin: the rest of its own walker, never a
    whole cycle.
    """

    #: results smaller than this are plain copies: a block would not pay for itself
    MIN_BYTES = 64 * 1024

    def __init__(self) -> None:
        self._blocks: dict[int, list[ReusableMemory]] = {}
        #: per size: where the next take starts looking, and whether every block was found in use
        #: since the last trim (then new blocks are made without looking: nothing is dropped mid-map)
        self._next: dict[int, int] = {}
        self._exhausted: set[int] = set()

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 block of exactly ``nbytes`` that no live array uses (looked for with `idle_from`,
        from where the last take of this size stopped)."""
        bucket = self._blocks.setdefault(nbytes, [])
        if nbytes not in self._exhausted:
            k = next(idle_from(bucket, self._next.get(nbytes, 0)), None)
            if k is not None:
                self._next[nbytes] = k + 1
                return bucket[k].hand_out()
            self._exhausted.add(nbytes)
        block = ReusableMemory(memoryview(np.empty(nbytes, dtype=np.uint8)))
        bucket.append(block)
        return block.hand_out()

    def trim(self, keep_bytes: int) -> None:
        """Free idle blocks beyond ``keep_bytes`` (call after each cycle); the idle ones kept go first,
        where the next cycle's takes start looking."""
        self._exhausted.clear()
        self._next.clear()
        kept = 0
        for size, bucket in list(self._blocks.items()):
            idle, busy = [], []
            for block in bucket:
                if not block.idle():
                    busy.append(block)
                elif kept + size <= keep_bytes:
                    kept += size
                    idle.append(block)
            if idle or busy:
                self._blocks[size] = idle + busy
            else:
                del self._blocks[size]

    def clear(self) -> None:
        self._blocks.clear()
        self._next.clear()
        self._exhausted.clear()
