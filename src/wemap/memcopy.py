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
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["copy_into", "copy_of", "BlockPool", "PARALLEL_MIN_BYTES"]

#: arrays smaller than this are copied by the calling thread
PARALLEL_MIN_BYTES = 4 * 2**20
_MAX_THREADS = 4

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


class BlockPool:
    """Reusable memory for result walkers, so a steady WE loop stops paying page faults.

    Copying a result out of shared memory into freshly allocated arrays costs about as much
    again as the copy itself: glibc hands large freed blocks back to the kernel, and the next
    cycle faults and zeroes them anew. Each result walker's arrays are instead carved from one
    block; once nothing refers to any array of a block, the block is handed out again. Each
    time, the caller gets a new array over the block's memory (through a memoryview, so numpy
    makes that array the ``base`` of every view carved from it) and the pool keeps only a weak
    reference to it, which dies with the last view. One block per walker bounds what a kept
    array can pin: the rest of its own walker, never a whole cycle.
    """

    #: results smaller than this are plain copies: a block would not pay for itself
    MIN_BYTES = 64 * 1024

    def __init__(self) -> None:
        # per size: [memory, weak reference to the array last handed out over it]
        self._blocks: dict[int, list[list]] = {}

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 block of exactly ``nbytes`` that no live array uses."""
        bucket = self._blocks.setdefault(nbytes, [])
        entry = next((e for e in bucket if e[1] is None or e[1]() is None), None)
        if entry is None:
            entry = [memoryview(np.empty(nbytes, dtype=np.uint8)), None]
            bucket.append(entry)
        block = np.frombuffer(entry[0], dtype=np.uint8)
        entry[1] = weakref.ref(block)
        return block

    def trim(self, keep_bytes: int) -> None:
        """Free idle blocks beyond ``keep_bytes`` (call after each cycle)."""
        kept = 0
        for size, bucket in list(self._blocks.items()):
            live = []
            for entry in bucket:
                if entry[1] is not None and entry[1]() is not None:
                    live.append(entry)
                elif kept + size <= keep_bytes:
                    kept += size
                    live.append(entry)
            if live:
                self._blocks[size] = live
            else:
                del self._blocks[size]

    def clear(self) -> None:
        self._blocks.clear()
