"""A small weighted-ensemble cycle driver: segments (through any mapper), boundary conditions,
resampling, reporting — and per-cycle statistics on where the time went.

wemap's mappers also plug into wepy's own ``Manager``; this driver exists so a WE run needs
nothing but wemap, and so the demo and benchmarks can show the segment stage in detail::

    result = wemap.sim.run(walkers, runner.run_segment, WorkerMapper(num_workers=2),
                           n_cycles=10, segment_length=1000,
                           resampler=BinnedResampler(edges, 4), progress=phi)
    for c in result.cycles: print(c.segment_wall_s, c.mapper_overhead_s)

The driver owns the mapper's life: ``init`` before the first cycle and ``cleanup`` after the
last, after an exception in any stage and after Ctrl-C.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from .mapper import MapperBase
from .resample import ResampleResult

__all__ = ["run", "RunResult", "CycleStats", "Resampler"]

logger = logging.getLogger(__name__)


class Resampler(Protocol):
    """What `run` needs of a wemap-style resampler (`wemap.resample.BinnedResampler` is one).

    wepy's resamplers (subclasses of ``wepy.resampling.resamplers.resampler.Resampler``, whose
    ``resample(walkers)`` returns ``(walkers, resampling_data, resampler_data)``) are taken too.
    """

    def resample(self, walkers: Sequence[Any], values: np.ndarray | None = None) -> ResampleResult | list: ...


def _is_wepy_resampler(resampler: Any) -> bool:
    # a wepy resampler's module is loaded whenever one exists, so nothing is imported here
    module = sys.modules.get("wepy.resampling.resamplers.resampler")
    return module is not None and isinstance(resampler, module.Resampler)


def _resample(resampler: Any, walkers: list, values: np.ndarray | None) -> tuple[list, int, int]:
    """(resampled walkers, splits, merges) from a wemap-style or a wepy resampler."""
    if _is_wepy_resampler(resampler):
        out, resampling_data, _ = resampler.resample(walkers)
        return list(out), *_wepy_splits_merges(resampler, resampling_data)
    result = resampler.resample(walkers, values)
    if isinstance(result, ResampleResult):
        return result.walkers, result.n_splits, result.n_merges
    return list(result), 0, 0


def _wepy_splits_merges(resampler: Any, resampling_data: Sequence[dict]) -> tuple[int, int]:
    """Walkers cloned and walkers merged away, counted from a wepy resampler's decision records."""
    enum = getattr(getattr(resampler, "DECISION", None), "ENUM", None)
    clone, squash = getattr(enum, "CLONE", None), getattr(enum, "SQUASH", None)
    splits = merges = 0
    for record in resampling_data:
        decision = int(np.asarray(record.get("decision_id", -1)).ravel()[0])
        splits += clone is not None and decision == clone.value
        merges += squash is not None and decision == squash.value
    return splits, merges


@dataclass
class CycleStats:
    """One cycle: what came out of it and where its time went (seconds)."""

    cycle_idx: int
    #: walkers after resampling (what the next cycle runs); `n_segments` ran in this one
    n_walkers: int
    #: sum of weights after resampling
    weight_sum: float
    #: progress coordinate over the walkers that came out of the segments (after boundary conditions)
    progress_min: float | None
    progress_max: float | None
    #: wall time of ``mapper.map``: every walker's segment, as the manager saw it
    segment_wall_s: float
    #: the mapper's ``{worker_idx: [seconds per segment]}`` for this cycle
    worker_segment_times: dict[int, list[float]]
    #: the busiest worker's summed segment time: the best the segment stage could have taken
    max_worker_busy_s: float
    #: segment-stage wall time not spent running a segment on the busiest worker
    mapper_overhead_s: float
    bc_s: float = 0.0
    resample_s: float = 0.0
    report_s: float = 0.0
    n_splits: int = 0
    n_merges: int = 0
    #: walkers whose segments ran in this cycle (before boundary conditions and resampling)
    n_segments: int = 0
    #: element-wise sum, over this cycle's segments, of the ``segment_timings`` field that
    #: runners such as `wemap.openmm.OpenMMRunner` put in the walkers they return (else None)
    segment_timings_sum: list[float] | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["worker_segment_times"] = {str(k): list(v) for k, v in self.worker_segment_times.items()}
        return d


@dataclass
class RunResult:
    """The walkers after the last cycle and one `CycleStats` per cycle."""

    walkers: list
    cycles: list[CycleStats] = field(default_factory=list)


def _sum_segment_timings(walkers: list) -> list[float] | None:
    total = None
    for w in walkers:
        try:
            t = np.asarray(w.state["segment_timings"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            return None
        total = t.copy() if total is None else total + t
    return None if total is None else total.tolist()


def _apply_boundary_conditions(bc: Any, walkers: list, cycle_idx: int) -> list:
    if hasattr(bc, "warp_walkers"):  # a wepy boundary-conditions object
        return list(bc.warp_walkers(walkers, cycle_idx)[0])
    return list(bc(walkers, cycle_idx))


def run(
    walkers: Sequence[Any],
    segment_func: Callable[..., Any],
    mapper: MapperBase,
    n_cycles: int,
    segment_length: int,
    *,
    progress: Callable[[Any], float] | None = None,
    resampler: Resampler | Any | None = None,
    boundary_conditions: Callable[[list, int], list] | Any = None,
    reporters: Iterable[Callable[[CycleStats, list], None]] = (),
    show_progress: bool | None = None,
    num_workers: int | None = None,
) -> RunResult:
    """Run ``n_cycles`` WE cycles of ``segment_length`` steps from ``walkers``.

    Per cycle: ``mapper.map(segment_func, ...)`` over the walkers → ``boundary_conditions``
    (a callable ``(walkers, cycle_idx) -> walkers``, or a wepy object with ``warp_walkers``)
    → ``resampler.resample(walkers, values)`` (skipped if None; a wepy resampler is called as
    wepy's ``Manager`` calls it, ``resample(walkers)``) → each reporter
    ``(stats, walkers)``. ``progress`` (walker -> float) gives the values the resampler
    bins and the stats' range; it defaults to the resampler's own ``progress``.
    ``segment_func`` gets ``(walker, segment_length, cycle_idx=..., walker_idx=...)``.
    ``show_progress``: a progress bar on stderr; None (the default) draws it only on a terminal.
    """
    walkers = list(walkers)
    if not walkers:
        raise ValueError("run() needs at least one walker")
    if n_cycles < 0:
        raise ValueError(f"n_cycles must be >= 0, got {n_cycles}")
    if progress is None and resampler is not None:
        progress = getattr(resampler, "progress", None)
    reporters = list(reporters)
    result = RunResult(walkers=walkers)
    # disable=None: tqdm draws the bar only when stderr is a terminal (a log file gets no carriage returns)
    disable = None if show_progress is None else not show_progress
    bar = tqdm(range(n_cycles), desc="WE cycles", unit="cycle", disable=disable, dynamic_ncols=True)
    try:
        mapper.init(segment_func=segment_func, num_workers=num_workers)
        for cycle_idx in bar:
            walkers, stats = _cycle(
                walkers, mapper, cycle_idx, segment_length, progress, resampler, boundary_conditions, reporters
            )
            result.walkers = walkers
            result.cycles.append(stats)
            postfix = {"walkers": stats.n_walkers, "segments": f"{stats.segment_wall_s:.2f}s"}
            if stats.progress_min is not None:
                postfix["progress"] = f"{stats.progress_min:.1f}..{stats.progress_max:.1f}"
            bar.set_postfix(postfix, refresh=False)
    finally:
        bar.close()
        mapper.cleanup()
    return result


def _cycle(
    walkers: list,
    mapper: MapperBase,
    cycle_idx: int,
    segment_length: int,
    progress: Callable[[Any], float] | None,
    resampler: Resampler | None,
    boundary_conditions: Any,
    reporters: list,
) -> tuple[list, CycleStats]:
    n = len(walkers)
    t0 = time.perf_counter()
    new = mapper.map(walkers, [segment_length] * n, cycle_idx=[cycle_idx] * n, walker_idx=list(range(n)))
    t1 = time.perf_counter()
    seg_times = {int(k): list(v) for k, v in mapper.worker_segment_times.items()}
    busy = max((math.fsum(v) for v in seg_times.values()), default=0.0)
    timings = _sum_segment_timings(new)

    if boundary_conditions is not None:
        new = _apply_boundary_conditions(boundary_conditions, new, cycle_idx)
    t2 = time.perf_counter()

    values = np.array([progress(w) for w in new], dtype=np.float64) if progress is not None else None
    n_splits = n_merges = 0
    if resampler is not None:
        new, n_splits, n_merges = _resample(resampler, new, values)
    t3 = time.perf_counter()

    stats = CycleStats(
        cycle_idx=cycle_idx,
        n_walkers=len(new),
        weight_sum=math.fsum(w.weight for w in new),
        progress_min=float(values.min()) if values is not None and len(values) else None,
        progress_max=float(values.max()) if values is not None and len(values) else None,
        segment_wall_s=t1 - t0,
        worker_segment_times=seg_times,
        max_worker_busy_s=busy,
        mapper_overhead_s=(t1 - t0) - busy,
        bc_s=t2 - t1,
        resample_s=t3 - t2,
        n_splits=n_splits,
        n_merges=n_merges,
        n_segments=n,
        segment_timings_sum=timings,
    )
    for reporter in reporters:
        reporter(stats, new)
    stats.report_s = time.perf_counter() - t3
    logger.debug("cycle %d: %s", cycle_idx, stats)
    return new, stats
