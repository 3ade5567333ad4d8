"""Copy a walker's arrays into shared memory: one call for small ones, a few threads for large ones.

One thread cannot saturate memory bandwidth and numpy's ``copyto`` releases the GIL, so a large array
is copied in row blocks on a small shared thread pool.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._arrays import copy_arrays
from .pool import usable_cores

__all__ = ["copy_into", "write_arrays", "PARALLEL_MIN_BYTES"]

#: arrays smaller than this are copied by the calling thread
PARALLEL_MIN_BYTES = 4 * 2**20
_MAX_THREADS = 4

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_lock = threading.Lock()


def _threads() -> int:
    return max(1, min(_MAX_THREADS, usable_cores()))


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():  # a pool does not survive fork
            _pool = ThreadPoolExecutor(threads, thread_name_prefix="wemap-copy")
            _pool_pid = os.getpid()
        return _pool


def copy_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``np.copyto(dst, src)`` (same shape and dtype), in parallel row blocks when large."""
    n = _threads() if src.nbytes >= PARALLEL_MIN_BYTES and src.ndim >= 1 and len(src) >= 2 else 1
    if n < 2:
        np.copyto(dst, src, casting="no")
        return
    bounds = np.linspace(0, len(src), n + 1, dtype=np.int64)
    pool = _executor(n)
    futures = [pool.submit(np.copyto, dst[a:b], src[a:b], casting="no")
               for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    for f in futures:
        f.result()


def write_arrays(block: np.ndarray, offsets: list[int], arrays: list[np.ndarray], largest: int) -> None:
    """Each of ``arrays`` into the uint8 ``block`` at its offset; ``largest``: the biggest one's bytes."""
    if largest < PARALLEL_MIN_BYTES:
        try:
            copy_arrays(block, offsets, arrays)  # a view and a copyto per array would cost more than the bytes
            return
        except BufferError:  # an array that is not C-contiguous: np.copyto lays it out
            pass
    for arr, off in zip(arrays, offsets):
        copy_into(np.ndarray(arr.shape, arr.dtype, block, off), arr)
