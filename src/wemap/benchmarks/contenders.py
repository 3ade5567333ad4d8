"""Every mapper the benchmark can time: wemap's own and the peers, with what each one holds in memory.

A `Contender` knows how to build its mapper, whether it is installed here (and why not),
and how many copies of a cycle's walkers it keeps at once across the manager, the workers and
any shared store, so a cell can be sized before it runs.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from . import peers

__all__ = ["Contender", "discover", "select", "normalise", "BASELINES", "FLOOR"]

logger = logging.getLogger(__name__)

FLOOR = "memcpy floor"
#: the mapper each row is compared to: the first of these measured in the same cell
BASELINES = ("wepy", "WorkerMapper")


@dataclass(frozen=True)
class Contender:
    """One mapper the benchmark can time.

    ``ram_copies``: sets of a cycle's walkers held at once in RAM, over every process and store,
    counting the caller's own inputs (``/dev/shm`` is RAM too); ``ram_per_worker``: extra single
    walkers each worker holds; ``shm_copies``: how many of those sets live in ``/dev/shm``.
    The figures are a little above the peak memory use measured at 48 walkers × 1M atoms on
    2 workers (used memory sampled every 20 ms over two cycles, the caller's walkers included):
    wepy 3.7, WorkerMapper 2.2, ProcessPoolExecutor 2.3, SharedMemWorkerMapper 4.0, DaskMapper
    2.2, Ray 4.3.
    """

    key: str
    label: str
    kind: str  # "wemap" or "peer"
    factory: Callable[[int, Callable[..., Any]], Any] | None
    available: bool = True
    reason: str | None = None
    slow_start: bool = False
    runs_last: bool = False  # keeps threads in the manager: run after every mapper that forks
    persistent_runtime: bool = False  # its helper processes outlive one mapper (Ray's raylet, store)
    in_process: bool = False
    ram_copies: float = 3.0
    ram_per_worker: float = 3.0
    shm_copies: float = 0.0
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def make(self, workers: int, segment_func: Callable[..., Any]) -> Any:
        assert self.factory is not None and self.available, f"{self.label} is not available: {self.reason}"
        return self.factory(workers, segment_func)

    def processes(self, workers: int) -> int:
        """How many segments it runs at once."""
        return 1 if self.in_process else workers

    def estimate(self, cycle_bytes: int, walker_bytes: int, workers: int) -> tuple[int, int]:
        """(RAM bytes, of which /dev/shm bytes) a cell needs at its peak."""
        ram = self.ram_copies * cycle_bytes + self.ram_per_worker * walker_bytes * self.processes(workers)
        return int(ram), int(self.shm_copies * cycle_bytes)


def normalise(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _wemap_mapper(name: str) -> tuple[Any, str | None]:
    import wemap

    try:
        return getattr(wemap, name), None
    except (AttributeError, ImportError) as exc:
        # wemap's own message names the mapper and the fix (the innermost when it wraps another): say it once
        own: BaseException | None = exc
        message = None
        while own is not None and str(own).startswith(f"wemap.{name} "):
            message, own = str(own), own.__cause__
        return None, message or f"wemap.{name} is not available ({type(exc).__name__}: {exc})"


def _installed(module: str, extra: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install {extra})"
    return None


def discover() -> list[Contender]:
    """Every contender, in table order, each marked available or not (with the reason)."""
    out: list[Contender] = []

    def wemap_contender(name: str, **kw: Any) -> Contender:
        cls, why = _wemap_mapper(name)
        factory = None if cls is None else (lambda w, f, cls=cls: cls(num_workers=w, segment_func=f))
        return Contender(name, name, "wemap", factory, available=cls is not None, reason=why, **kw)

    out.append(wemap_contender("Mapper", in_process=True, ram_copies=1.0, ram_per_worker=0.0))
    out.append(wemap_contender("WorkerMapper"))
    out.append(wemap_contender("SharedMemWorkerMapper", ram_copies=4.5, ram_per_worker=1.0, shm_copies=2.5))
    dask = wemap_contender("DaskMapper", slow_start=True, runs_last=True, ram_copies=4.0, aliases=("dask",))
    if not dask.available and "No module named 'wemap.dask_mapper'" in (dask.reason or ""):
        dask = replace(dask, reason="wemap.DaskMapper is not in this wemap yet")
    out.append(dask)

    why = _installed("wepy", "'wemap[wepy]'")
    out.append(Contender(
        "wepy", "wepy WorkerMapper", "peer",
        None if why else (lambda w, f: peers.wepy_worker_mapper(w, f)),
        available=why is None, reason=why, ram_copies=4.0, aliases=("wepyworkermapper",),
    ))
    why = _installed("ray", "'wemap[ray]'")
    out.append(Contender(
        "ray", "Ray actors", "peer",
        None if why else (lambda w, f: peers.RayActorMapper(num_workers=w, segment_func=f)),
        available=why is None, reason=why, slow_start=True, runs_last=True, persistent_runtime=True,
        ram_copies=5.0, ram_per_worker=1.0, shm_copies=2.0,
        aliases=("rayactors",),
    ))
    out.append(Contender(
        "processpool", "ProcessPoolExecutor", "peer",
        lambda w, f: peers.ProcessPoolMapper(num_workers=w, segment_func=f),
        aliases=("processpoolexecutor", "concurrentfutures"),
    ))
    return out


def select(contenders: Iterable[Contender], names: Iterable[str] | None) -> list[Contender]:
    """The contenders named (by key, label or alias, any case), in table order; all when ``names`` is empty."""
    contenders = list(contenders)
    if not names:
        return contenders
    wanted = {normalise(n) for n in names}
    known = {}
    for c in contenders:
        for n in (c.key, c.label, *c.aliases):
            known[normalise(n)] = c.key
    unknown = sorted(w for w in wanted if w not in known)
    if unknown:
        choices = ", ".join(c.key for c in contenders)
        raise ValueError(f"unknown mapper name(s) {unknown}; choose from {choices}")
    keys = {known[w] for w in wanted}
    return [c for c in contenders if c.key in keys]
