"""Segment functions and walkers the benchmarks map over.

The segment functions live in an importable module (not a script's ``__main__``) so that
every worker process, whatever its start method (forkserver, spawn, Ray, Dask), can unpickle
them by reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..walker import Walker

__all__ = ["Workload", "WORKLOADS", "noop_segment", "sleep_segment", "fresh_segment", "make_walkers", "walker_bytes",
           "bytes_per_walker"]


def noop_segment(walker: Any, segment_length: Any = 0, **kwargs: Any) -> Any:
    """Hand the walker back unchanged: what is left of a cycle is pure transport."""
    return walker


def sleep_segment(walker: Any, segment_length: float = 0.0, **kwargs: Any) -> Any:
    """Sleep ``segment_length`` seconds, then hand the walker back: a segment of fixed duration
    that shows whether the transport overlaps with the segments and what the manager burns
    while it waits."""
    time.sleep(float(segment_length))
    return walker


#: per process: the arrays `fresh_segment` hands back, made once per (field, shape, dtype)
_FRESH: dict[tuple, np.ndarray] = {}


def fresh_segment(walker: Any, segment_length: Any = 0, **kwargs: Any) -> Any:
    """Hand back a walker whose arrays are new, not the input's, as an MD engine's are.

    A no-op lets a mapper skip work a real segment never lets it skip (SharedMemWorkerMapper
    refers to the input instead of writing a result); this one does no work either, since its
    arrays are made once per worker process and reused, so what is left is transport with a
    result that must travel back.
    """
    state = {}
    for k, v in walker.state.items():
        if isinstance(v, np.ndarray):
            key = (k, v.shape, v.dtype.str)
            out = _FRESH.get(key)
            if out is None:
                out = _FRESH[key] = np.array(v, copy=True)
            v = out
        state[k] = v
    return Walker(state, walker.weight)


@dataclass(frozen=True)
class Workload:
    """A segment function and the ``segment_length`` each walker gets (seconds for ``sleep``)."""

    name: str
    func: Callable[..., Any]
    description: str
    #: each cycle maps the previous cycle's results, as a WE loop does (the first maps the made walkers)
    fed_back: bool = False

    def segment_length(self, sleep_s: float) -> float:
        return sleep_s if self.name == "sleep" else 0.0

    def duration(self, sleep_s: float) -> float:
        """Seconds one segment takes by itself (0 for the no-op)."""
        return self.segment_length(sleep_s)


WORKLOADS: dict[str, Workload] = {
    "noop": Workload("noop", noop_segment, "no-op segment (pure transport)"),
    "sleep": Workload("sleep", sleep_segment, "fixed-duration segment (sleep)"),
    "fresh": Workload("fresh", fresh_segment, "segment returning new arrays (as MD does), no work"),
    "loop": Workload("loop", fresh_segment, "new arrays, each cycle mapping the last one's results (a WE loop)",
                     fed_back=True),
}


def bytes_per_walker(n_atoms: int) -> int:
    """float64 positions and velocities (n_atoms × 3 each) plus a 3 × 3 box."""
    return 2 * n_atoms * 3 * 8 + 9 * 8


def make_walkers(n_walkers: int, n_atoms: int, seed: int = 0) -> list[Walker]:
    """``n_walkers`` walkers of ``n_atoms`` atoms, every page touched (random contents)."""
    rng = np.random.default_rng(seed)
    return [
        Walker(
            {
                "positions": rng.random((n_atoms, 3)),
                "velocities": rng.random((n_atoms, 3)),
                "box_vectors": np.eye(3) * 5.0,
            },
            1.0 / n_walkers,
        )
        for _ in range(n_walkers)
    ]


def walker_bytes(w: Walker) -> int:
    """Bytes of the walker's arrays: what a transport must carry each way."""
    return sum(v.nbytes for v in w.state.values() if isinstance(v, np.ndarray))
