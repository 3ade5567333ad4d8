"""wemap: work mappers for weighted-ensemble molecular dynamics.

Run every walker's segment on a pool of worker processes (one per GPU) and move walker
arrays through shared memory instead of pickles. See `Mapper`, `WorkerMapper`,
`SharedMemWorkerMapper`.
"""

from __future__ import annotations

from .codec import Codec
from .errors import RingCorruptError, ShmSpaceError, TaskException, TaskTimeout, WemapError, WorkerException
from .mapper import Mapper
from .walker import Walker
from .worker import Task, Worker, current_worker
from .worker_mapper import WorkerMapper

__all__ = [
    "Mapper",
    "WorkerMapper",
    "SharedMemWorkerMapper",
    "DaskMapper",
    "Codec",
    "Walker",
    "Worker",
    "Task",
    "current_worker",
    "TaskException",
    "WorkerException",
    "TaskTimeout",
    "WemapError",
    "RingCorruptError",
    "ShmSpaceError",
]

__version__ = "0.1.0"


def __dir__() -> list[str]:
    # the lazily imported mappers are part of the package's namespace too
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str):
    # SharedMemWorkerMapper needs the compiled ring; import it on first use so that a broken
    # build still leaves the pure-Python mappers usable and says what to do.
    if name == "SharedMemWorkerMapper":
        from .shm import SharedMemWorkerMapper

        return SharedMemWorkerMapper
    if name == "DaskMapper":  # dask is an optional extra, imported only when asked for
        try:
            from .dask_mapper import DaskMapper
        except ImportError as exc:  # an AttributeError keeps hasattr() and getattr(..., None) working
            raise AttributeError(f"wemap.DaskMapper needs dask: pip install 'wemap[dask]' ({exc})") from exc
        return DaskMapper
    raise AttributeError(f"module 'wemap' has no attribute {name!r}")
