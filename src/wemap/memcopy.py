"""Copy large arrays with a few threads: one thread cannot saturate memory bandwidth.

numpy releases the GIL inside ``copyto``, so splitting a large copy into row blocks on a
small shared thread pool moves the bytes (and takes the page faults of freshly allocated
output) in parallel. Small arrays are copied inline: a thread handoff costs more than
they do.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["copy_into", "copy_of", "PARALLEL_MIN_BYTES"]

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
