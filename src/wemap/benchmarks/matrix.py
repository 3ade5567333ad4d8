"""The transport matrix: mapper × atoms per walker × walkers × workers × workload, and its ratios.

Cells run grouped by walker set (atoms, walkers): the walkers are made once, the memcpy floor
is measured on them, then every workload × workers × mapper runs on the same arrays. Mappers
that keep threads in the manager (Ray, Dask) run after the others, so that no mapper forks a
process that already has those threads. Every cell is sized before it runs and skipped, with
the reason in its row, when it would not fit in the memory available.

Every ratio is a quotient of two figures stored in the same result (`add_ratios`), so a
reader can recompute each one from the JSON.
"""

from __future__ import annotations

import gc
import logging
import math
import shutil
import statistics
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from .contenders import BASELINES, FLOOR, Contender
from .measure import deadline, memcpy_floor, time_mapper
from .report import cgroup_room
from .workloads import WORKLOADS, bytes_per_walker, make_walkers

__all__ = ["MatrixSpec", "run_matrix", "add_ratios", "goals", "goals_cell", "per_task_goal", "HEADLINE",
           "HEADLINE_COMMAND", "GOALS", "PER_TASK_CELL", "PER_TASK_TARGET_US", "MEMORY_HEADROOM"]

logger = logging.getLogger(__name__)

#: the cell the goals are stated for
HEADLINE = {"workload": "noop", "atoms": 1_000_000, "walkers": 8, "workers": 2}
#: the command that measures the goals in that cell (and nothing else)
HEADLINE_COMMAND = ("wemap bench --atoms 1M --walkers 8 --workers 2 --workload noop "
                    "--mappers SharedMemWorkerMapper wepy ray --no-openmm")
#: (name, contender key compared, comparison, target); see `goals`
GOALS = (
    ("SharedMemWorkerMapper speedup over wepy WorkerMapper", "wepy", ">=", 25.0),
    ("SharedMemWorkerMapper speedup over Ray actors", "ray", ">=", 5.0),
    ("SharedMemWorkerMapper cycle / memcpy floor", "floor", "<=", 1.5),
)
#: the cell of the per-task goal (`per_task_goal`): small walkers, where the transport's fixed costs show
PER_TASK_CELL = {"workload": "noop", "atoms": 10_000, "walkers": 8, "workers": 2}
#: SharedMemWorkerMapper's cycle over the memcpy floor, per walker, at most this many µs in that cell
PER_TASK_TARGET_US = 50.0
#: fraction of the memory available at the start of a group that a cell may plan to use
MEMORY_HEADROOM = 0.85
_SHM = "/dev/shm"


@dataclass(frozen=True)
class MatrixSpec:
    """What to run; ``memory_budget_bytes`` caps the plan below what the machine has free."""

    atoms: Sequence[int]
    walkers: Sequence[int]
    workers: Sequence[int]
    workloads: Sequence[str]
    repeats: int = 5
    warmup: int = 1
    #: each cell times at least ``repeats`` cycles and at least this many seconds of them
    min_time_s: float = 0.2
    sleep_s: float = 0.05
    memory_budget_bytes: int | None = None
    cell_timeout_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in asdict(self).items()}


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _budget(spec: MatrixSpec) -> tuple[int, int | None]:
    """(RAM bytes a cell may plan for, free /dev/shm bytes or None); a cgroup limit counts too."""
    available = psutil.virtual_memory().available
    room = cgroup_room()
    if room is not None:
        available = min(available, room)
    ram = int(available * MEMORY_HEADROOM)
    if spec.memory_budget_bytes is not None:
        ram = min(ram, spec.memory_budget_bytes)
    try:
        shm = shutil.disk_usage(_SHM).free
    except OSError:
        shm = None
    return ram, shm


def _why_not(ram_need: int, shm_need: int, ram: int, shm: int | None) -> str | None:
    if ram_need > ram:
        return f"needs ~{_gib(ram_need)} of memory, {_gib(ram)} may be used"
    if shm is not None and shm_need > shm:
        return f"needs ~{_gib(shm_need)} of /dev/shm, {_gib(shm)} free"
    return None


def _base_row(label: str, key: str, kind: str, workload: str, sleep_s: float, atoms: int, walkers: int,
              workers: int, processes: int, spec: MatrixSpec) -> dict[str, Any]:
    wb = bytes_per_walker(atoms)
    return {
        "mapper": label,
        "key": key,
        "kind": kind,
        "workload": workload,
        "segment_s": WORKLOADS[workload].duration(sleep_s),
        "atoms": atoms,
        "walkers": walkers,
        "workers": workers,
        "processes": processes,
        "bytes_per_walker": wb,
        "bytes_per_cycle": wb * walkers,
        "repeats": spec.repeats,  # the cycles timed: more than asked where they are short (min_time_s)
        "min_time_s": spec.min_time_s,
        "warmup": spec.warmup,
        "status": "ok",
        "reason": None,
    }


def _finish(row: dict[str, Any], figures: dict[str, Any], moves_data: bool = True) -> dict[str, Any]:
    """Add the raw figures and what follows from them within the row."""
    row.update(figures)
    med = row["cycle_s_median"]
    row["ideal_s"] = math.ceil(row["walkers"] / row["processes"]) * row["segment_s"]
    row["overhead_s"] = med - row["ideal_s"]
    # a cycle that is mostly sleep says nothing about bandwidth
    row["gb_per_s"] = (2 * row["bytes_per_cycle"] / med / 1e9
                       if moves_data and med > 0 and not row["segment_s"] else None)
    cpu = row.get("manager_cpu_s_median")
    row["manager_cpu_frac"] = cpu / med if cpu is not None and med > 0 else None
    return row


def _floor_row(walkers: list, atoms: int, spec: MatrixSpec) -> dict[str, Any]:
    row = _base_row(FLOOR, "floor", "floor", "noop", spec.sleep_s, atoms, len(walkers), 1, 1, spec)
    times = memcpy_floor(walkers, spec.repeats, spec.warmup, spec.min_time_s)
    return _finish(row, {
        "repeats": len(times),
        "cycle_s": times,
        "cycle_s_median": statistics.median(times),
        "cycle_s_min": min(times),
        "cycle_s_max": max(times),
    })


def run_matrix(spec: MatrixSpec, contenders: Sequence[Contender], progress: bool = True,
               checkpoint: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Every cell of ``spec`` for every available contender, plus one memcpy floor per walker set.

    ``checkpoint(rows so far)`` is called after each walker set, so a long run that is
    interrupted keeps what it measured.
    """
    runnable = [c for c in contenders if c.available]
    phases = [[c for c in runnable if not c.runs_last], [c for c in runnable if c.runs_last]]
    groups = [(a, w) for a in sorted(set(spec.atoms)) for w in sorted(set(spec.walkers))]
    workers = sorted(set(spec.workers))
    per_group = len(spec.workloads) * len(workers)
    total = len(groups) * (1 + per_group * len(runnable))
    rows: list[dict[str, Any]] = []
    bar = _progress(total, progress)
    try:
        floor = True  # the floor is measured with the first phase that runs
        for phase in phases:
            if not phase:
                continue
            for atoms, n_walkers in groups:
                rows.extend(_run_group(spec, phase, atoms, n_walkers, workers, floor=floor, bar=bar))
                if checkpoint is not None:
                    checkpoint(rows)
            floor = False
    finally:
        bar.close()
    return rows


def _run_group(spec: MatrixSpec, phase: Sequence[Contender], atoms: int, n_walkers: int, workers: Sequence[int],
               floor: bool, bar: Any) -> list[dict[str, Any]]:
    gc.collect()
    ram, shm = _budget(spec)
    wb = bytes_per_walker(atoms)
    cycle_bytes = wb * n_walkers
    plan: list[tuple[str, int, Contender, dict[str, Any]]] = []
    for workload in spec.workloads:
        for k in workers:
            for c in phase:
                row = _base_row(c.label, c.key, c.kind, workload, spec.sleep_s, atoms, n_walkers, k,
                                c.processes(k), spec)
                row["in_process"] = c.in_process
                ram_need, shm_need = c.estimate(cycle_bytes, wb, k)
                if WORKLOADS[workload].fed_back:
                    ram_need += cycle_bytes  # the made walkers stay while last cycle's results go in
                row["estimate_ram_bytes"], row["estimate_shm_bytes"] = ram_need, shm_need
                why = _why_not(ram_need, shm_need, ram, shm)
                if why:
                    row.update(status="skipped", reason=why)
                plan.append((workload, k, c, row))
    rows: list[dict[str, Any]] = []
    floor_row = None
    if floor:
        floor_row = _base_row(FLOOR, "floor", "floor", "noop", spec.sleep_s, atoms, n_walkers, 1, 1, spec)
        floor_need = 3 * cycle_bytes
        floor_row["estimate_ram_bytes"], floor_row["estimate_shm_bytes"] = floor_need, 0
        why = _why_not(floor_need, 0, ram, shm)
        if why:
            floor_row.update(status="skipped", reason=why)
    todo = [p for p in plan if p[3]["status"] == "ok"]
    walkers: list = []  # made only when a cell or the floor will run
    try:
        if todo or (floor_row is not None and floor_row["status"] == "ok"):
            bar.set_postfix_str(f"making {n_walkers} walkers × {atoms:,} atoms")
            walkers = make_walkers(n_walkers, atoms)
        if floor_row is not None:
            if floor_row["status"] == "ok":
                bar.set_postfix_str(f"memcpy floor, {n_walkers} × {atoms:,} atoms")
                est = (floor_row["estimate_ram_bytes"], floor_row["estimate_shm_bytes"])
                floor_row = _floor_row(walkers, atoms, spec)
                floor_row["estimate_ram_bytes"], floor_row["estimate_shm_bytes"] = est
            rows.append(floor_row)
            bar.update(1)
        for workload, k, c, row in plan:
            if row["status"] == "ok":
                bar.set_postfix_str(f"{c.label}, {workload}, {n_walkers} × {atoms:,} atoms, {k} workers")
                try:
                    with deadline(spec.cell_timeout_s):
                        figures = time_mapper(c, walkers, WORKLOADS[workload], spec.sleep_s, k, spec.repeats,
                                              spec.warmup, spec.min_time_s)
                    _finish(row, figures, moves_data=not c.in_process)
                except Exception as exc:  # one mapper failing must not end the run
                    logger.error("%s failed on %s, %d walkers x %d atoms, %d workers:\n%s",
                                 c.label, workload, n_walkers, atoms, k, traceback.format_exc())
                    row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
                gc.collect()
            rows.append(row)
            bar.update(1)
    finally:
        del walkers
    return rows


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        logger.info("tqdm is not installed: no progress bar (pip install 'wemap[bench]')")
        return _NoBar()
    return tqdm(total=total, desc="wemap bench", unit="cell", dynamic_ncols=True)


def _same_cell(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] == b[k] for k in ("workload", "atoms", "walkers", "workers"))


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Ratios to the memcpy floor and to the baseline mapper, each from figures in ``rows``.

    ``x_floor = overhead_s / floor_s`` (the floor of the same walker set);
    ``speedup_vs_baseline = baseline_cycle_s / cycle_s_median`` (the baseline of the same cell:
    wepy's WorkerMapper when measured, else wemap's WorkerMapper). The figures divided are
    copied into the row (``floor_s``, ``baseline_cycle_s``) beside the ratio. A mapper that runs
    in the calling process (wemap's ``Mapper``) moves no bytes, so it gets no speedup.
    """
    ok = [r for r in rows if r["status"] == "ok"]
    floors = {(r["atoms"], r["walkers"]): r for r in ok if r["key"] == "floor"}
    for r in ok:
        floor = floors.get((r["atoms"], r["walkers"]))
        r["floor_s"] = floor["cycle_s_median"] if floor else None
        r["x_floor"] = r["overhead_s"] / r["floor_s"] if r["floor_s"] else None
        if r["key"] == "floor" or r.get("in_process", r["key"] == "Mapper"):
            r["baseline"] = r["baseline_cycle_s"] = r["speedup_vs_baseline"] = None
            continue
        base = None
        for key in BASELINES:
            base = next((b for b in ok if b["key"] == key and _same_cell(b, r)), None)
            if base is not None:
                break
        r["baseline"] = base["mapper"] if base else None
        r["baseline_cycle_s"] = base["cycle_s_median"] if base else None
        r["speedup_vs_baseline"] = r["baseline_cycle_s"] / r["cycle_s_median"] if base else None


def goals_cell(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The cell the goals are measured in: `HEADLINE` when SharedMemWorkerMapper ran there, else the
    no-op cell with the headline's walkers and workers and the most atoms it ran (``--quick`` runs no
    1M-atom cell); `HEADLINE` (and so "not measured") when there is neither."""
    ran = [r for r in rows if r["status"] == "ok" and r["key"] == "SharedMemWorkerMapper" and r["workload"] == "noop"]
    if any(all(r[k] == v for k, v in HEADLINE.items()) for r in ran):
        return dict(HEADLINE)
    near = [r["atoms"] for r in ran if r["walkers"] == HEADLINE["walkers"] and r["workers"] == HEADLINE["workers"]]
    return dict(HEADLINE, atoms=max(near)) if near else dict(HEADLINE)


def goals(rows: list[dict[str, Any]], cell: dict[str, Any] = HEADLINE) -> list[dict[str, Any]]:
    """The goals for SharedMemWorkerMapper in ``cell``, each with the two figures it divides.

    Speedups are ``other cycle_s_median / SharedMemWorkerMapper cycle_s_median``; the floor
    goal is ``SharedMemWorkerMapper cycle_s_median / floor cycle_s_median``. ``spread`` is the
    same quotient from the two rows' fastest and slowest cycles (``spread_from``), lowest and highest; a target
    inside it (``unsettled``) is met or missed by where the medians happened to land, as with a
    peer whose cycles are bimodal: more ``--repeats`` steady the medians (the fastest-to-slowest
    spread only widens with them).
    """
    ok = [r for r in rows if r["status"] == "ok"]

    def find(key: str) -> dict[str, Any] | None:
        if key == "floor":
            return next((r for r in ok if r["key"] == "floor" and r["atoms"] == cell["atoms"]
                         and r["walkers"] == cell["walkers"]), None)
        return next((r for r in ok if r["key"] == key and all(r[k] == v for k, v in cell.items())), None)

    shm = find("SharedMemWorkerMapper")
    out = []
    for name, key, op, target in GOALS:
        other = find(key)
        entry: dict[str, Any] = {"goal": name, "cell": dict(cell), "compared_with": key, "op": op, "target": target,
                                 "numerator_s": None, "denominator_s": None, "value": None, "met": None,
                                 "spread": None, "spread_from": "fastest and slowest cycles", "unsettled": None}
        if shm is not None and other is not None:
            top, bottom = (shm, other) if key == "floor" else (other, shm)
            num, den = top["cycle_s_median"], bottom["cycle_s_median"]
            value = num / den
            spread = [top["cycle_s_min"] / bottom["cycle_s_max"], top["cycle_s_max"] / bottom["cycle_s_min"]]
            entry.update(numerator_s=num, denominator_s=den, value=value,
                         met=value >= target if op == ">=" else value <= target,
                         spread=spread, unsettled=spread[0] < target < spread[1])
        else:
            missing = "SharedMemWorkerMapper" if shm is None else key
            entry["reason"] = f"{missing} not measured in this cell in this run"
        out.append(entry)
    return out


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def per_task_goal(rows: list[dict[str, Any]], cell: dict[str, Any] = PER_TASK_CELL,
                  target_us: float = PER_TASK_TARGET_US) -> dict[str, Any]:
    """The per-task goal: SharedMemWorkerMapper's median cycle minus the memcpy floor's, per walker, in µs,
    in ``cell`` (8 walkers x 10k atoms on 2 workers).

    ``spread`` comes from the two rows' quartiles (lowest: SharedMemWorkerMapper's first quartile
    less the floor's third; highest: the other way round): with hundreds of cycles of a millisecond
    the fastest and slowest are outliers of the machine, not the mapper.
    """
    ok = [r for r in rows if r["status"] == "ok"]
    shm = next((r for r in ok if r["key"] == "SharedMemWorkerMapper" and all(r[k] == v for k, v in cell.items())), None)
    floor = next((r for r in ok if r["key"] == "floor" and r["atoms"] == cell["atoms"]
                  and r["walkers"] == cell["walkers"]), None)
    name = (f"SharedMemWorkerMapper per-task overhead over the memcpy floor, µs "
            f"({cell['walkers']} walkers x {cell['atoms']:,} atoms, {cell['workers']} workers)")
    entry: dict[str, Any] = {"goal": name, "cell": dict(cell), "compared_with": "floor", "op": "<=",
                             "target": target_us, "unit": "us per task",
                             "numerator_s": None, "denominator_s": None, "value": None,
                             "met": None, "spread": None, "spread_from": "quartiles", "unsettled": None}
    if shm is None or floor is None:
        missing = "SharedMemWorkerMapper" if shm is None else "the memcpy floor"
        entry["reason"] = f"{missing} not measured in this cell in this run"
        return entry
    n = cell["walkers"]
    mine, base = shm["cycle_s_median"], floor["cycle_s_median"]
    value = (mine - base) / n * 1e6
    (m1, m3), (f1, f3) = _quartiles(shm["cycle_s"]), _quartiles(floor["cycle_s"])
    spread = [(m1 - f3) / n * 1e6, (m3 - f1) / n * 1e6]
    entry.update(numerator_s=mine, denominator_s=base, value=value, met=value <= target_us, spread=spread,
                 unsettled=spread[0] < target_us < spread[1])
    return entry
