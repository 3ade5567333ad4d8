"""Pickles for what travels over a worker's pipe, keeping every numpy array's dtype.

numpy's ``__reduce__`` pickling (a non-contiguous array or an ndarray subclass, even under
protocol 5) reloads a non-native byte order as native: ``>f8`` comes back ``<f8``, where
`wemap.Mapper` hands back the array itself. Such an array travels here as a native-order view of
the same bytes, viewed back with its own dtype on arrival; everything else pickles as
`multiprocessing` pickles it, with protocol 5.
"""

from __future__ import annotations

from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np

__all__ = ["dumps", "check_picklable", "check_sent", "PROTOCOL"]

PROTOCOL = 5


class _Pickler(ForkingPickler):
    def reducer_override(self, obj: Any) -> Any:
        # called only for objects that are not of a built-in type: cheap for everything else
        if isinstance(obj, np.ndarray) and not obj.dtype.isnative:
            return np.ndarray.view, (obj.view(obj.dtype.newbyteorder("=")), obj.dtype)
        return NotImplemented


def dumps(obj: Any) -> memoryview:
    """``obj`` pickled for a `multiprocessing.connection.Connection`'s ``send_bytes``; ``recv`` loads it."""
    return _Pickler.dumps(obj, PROTOCOL)


def check_picklable(what: str, obj: Any, sent: str) -> None:
    """Fail early, naming the keyword, when ``obj`` cannot travel: ``sent`` says who sends it where."""
    try:
        dumps(obj)
    except Exception as exc:
        raise TypeError(
            f"{what} ({obj!r}) cannot be pickled, and {sent}: define it at module level (not a lambda, "
            f"closure or local class), or use wemap.Mapper to run in this process. ({type(exc).__name__}: {exc})"
        ) from exc


def check_sent(mapper: Any, sent: str, **more: Any) -> None:
    """`check_picklable` for what a mapper sends every worker (and ``more``), each named by its keyword."""
    for what, obj in (("segment_func", mapper.segment_func), ("worker_type", mapper.worker_type),
                      ("worker_attributes", mapper.worker_attributes), ("worker_init", mapper.worker_init),
                      ("mapper_attributes", mapper.attributes), *more.items()):
        check_picklable(what, obj, sent)
