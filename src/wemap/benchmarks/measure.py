"""How one cell is measured: cycle wall time, manager CPU, peak RSS of every process, the memcpy floor.

Peak RSS comes from the kernel's high-water mark (``VmHWM`` in ``/proc/PID/status``), reset
for the manager and each process it started just before the timed cycles (``clear_refs``
"5", Linux 4.0+), so it covers every instant of the cycles without a sampling thread that
would add to the manager's CPU. Where the reset is refused, the RSS after the last cycle is
reported instead and the row says so (``rss_method``). Pages shared between processes (the
shared-memory segment, Ray's object store) count in every process that touches them.
"""

from __future__ import annotations

import gc
import logging
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import psutil

from ..pool import multiprocessing_helper_pids
from .contenders import Contender
from .workloads import Workload

__all__ = ["ProcessTree", "memcpy_floor", "floor_cycle", "time_mapper", "enough", "deadline", "CellTimeout",
           "MAX_REPEATS"]

logger = logging.getLogger(__name__)

#: most cycles `enough` asks for, however short they are
MAX_REPEATS = 2000


def _status_kib(pid: int | str, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class ProcessTree:
    """The manager and every process it started: workers, and helpers such as wepy's queue
    manager or Ray's raylet and object store (not multiprocessing's forkserver and tracker)."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.method = "vmhwm"

    def descendants(self) -> list[psutil.Process]:
        helpers = multiprocessing_helper_pids()
        return [p for p in self.me.children(recursive=True) if p.pid not in helpers]

    def reset_peaks(self) -> str:
        """Reset the peak-RSS mark of the manager and its processes; returns the method in use."""
        self.method = "vmhwm"
        for pid in ["self", *(p.pid for p in self.descendants())]:
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except FileNotFoundError:
                continue  # exited meanwhile
            except OSError as exc:
                logger.info("cannot reset peak RSS of %s (%s): reporting RSS after the cycles", pid, exc)
                self.method = "rss_after"
        return self.method

    def manager_rss(self) -> int:
        return self.me.memory_info().rss

    def peaks(self) -> tuple[int, int, int]:
        """(manager peak bytes, sum of the other processes' peak bytes, how many other processes)."""
        field = "VmHWM" if self.method == "vmhwm" else "VmRSS"
        mine = _status_kib("self", field) or 0
        total, n = 0, 0
        for p in self.descendants():
            kib = _status_kib(p.pid, field)
            if kib is not None:
                total += kib
                n += 1
        return mine * 1024, total * 1024, n

    def cpu_seconds(self) -> dict[int, float]:
        """user + system seconds of each descendant so far."""
        out = {}
        for p in self.descendants():
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out


class CellTimeout(Exception):
    """A cell ran past its deadline (a mapper hung, or the machine is far slower than planned)."""


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise `CellTimeout` in the main thread after ``seconds`` (SIGALRM); a no-op off the main
    thread, without SIGALRM, or for ``None``/0. Cleanup after the timeout is not covered."""
    if not seconds or not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise CellTimeout(f"the cell ran past its {seconds:g} s deadline (--cell-timeout)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def enough(count: int, seconds: float, repeats: int, min_time_s: float, cap: int = MAX_REPEATS) -> bool:
    """Whether ``count`` cycles timed, ``seconds`` in all, will do: at least ``repeats`` of them, and at
    least ``min_time_s`` seconds unless ``cap`` cycles are timed. A median of five 1 ms cycles on a
    shared machine says little, of 200 much more; a cycle of seconds is timed ``repeats`` times."""
    return count >= repeats and (count >= cap or seconds >= min_time_s)


def floor_cycle(walkers: Sequence[Any]) -> Callable[[], float]:
    """One cycle of the memcpy floor as a function returning its seconds: every array of every walker
    copied in and out with ``np.copyto``, into arrays made here once."""
    slots = [{k: np.empty_like(v) for k, v in w.state.items() if isinstance(v, np.ndarray)} for w in walkers]
    back = [{k: np.empty_like(v) for k, v in s.items()} for s in slots]

    def once() -> float:
        t0 = time.perf_counter_ns()
        for w, s, b in zip(walkers, slots, back):
            for k, dst in s.items():
                np.copyto(dst, w.state[k])
            for k, dst in b.items():
                np.copyto(dst, s[k])
        return (time.perf_counter_ns() - t0) / 1e9

    return once


def memcpy_floor(walkers: Sequence[Any], repeats: int, warmup: int = 1, min_time_s: float = 0.0) -> list[float]:
    """Seconds to copy every array of every walker in once and out once, with ``np.copyto``
    into arrays that already exist: what any transport must do at least. One per cycle timed:
    ``repeats``, or more to fill ``min_time_s`` (`enough`)."""
    once = floor_cycle(walkers)
    for _ in range(warmup):
        once()
    times: list[float] = []
    total = 0.0
    while not enough(len(times), total, repeats, min_time_s):
        times.append(once())
        total += times[-1]
    return times


def _leftovers(tree: ProcessTree, before: set[int], timeout: float = 5.0) -> list[int]:
    """pids of processes started since ``before`` still running ``timeout`` s after cleanup.

    Polls instead of waiting on them: reaping a child here would hide its exit from the
    mapper that owns it.
    """
    gc.collect()
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in tree.descendants():
            if p.pid in before:
                continue
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p.pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _check(out: Any, walkers: Sequence[Any]) -> None:
    if len(out) != len(walkers):
        raise AssertionError(f"mapper returned {len(out)} results for {len(walkers)} walkers")
    got = np.asarray(out[-1].state["positions"])
    if got.shape != walkers[-1].state["positions"].shape:
        raise AssertionError(f"mapper returned positions of shape {got.shape}, "
                             f"expected {walkers[-1].state['positions'].shape}")


def time_mapper(
    contender: Contender,
    walkers: Sequence[Any],
    workload: Workload,
    sleep_s: float,
    workers: int,
    repeats: int,
    warmup: int = 1,
    min_time_s: float = 0.0,
) -> dict[str, Any]:
    """Raw figures of ``repeats`` cycles (or more, to fill ``min_time_s``: `enough`) after
    ``warmup`` cycles (workers up, buffers sized, pages touched).

    The timed cycles run back to back, as the floor's do, so the two are timed alike: the CPU
    time of the manager's processes is read once before them and once after, not between
    cycles (psutil walks every process of the machine, a millisecond or two). What a pause
    before a cycle costs, the floor's and the mapper's, ``bench/cycle_gap.py`` measures.
    """
    lengths = [workload.segment_length(sleep_s)] * len(walkers)
    tree = ProcessTree()
    before_pids = {p.pid for p in tree.descendants()}
    t_init = time.perf_counter_ns()
    m = contender.make(workers, workload.func)
    try:
        m.init(segment_func=workload.func, num_workers=workers)
        init_s = (time.perf_counter_ns() - t_init) / 1e9
        warm = []
        inputs = walkers  # the loop workload maps each cycle's results in the next
        for _ in range(warmup):
            t0 = time.perf_counter_ns()
            out = m.map(inputs, lengths)
            warm.append((time.perf_counter_ns() - t0) / 1e9)
            _check(out, walkers)
            if workload.fed_back:
                inputs = out
            del out
        base_rss = tree.manager_rss()
        method = tree.reset_peaks()
        walls: list[float] = []
        cpus: list[float] = []
        before = tree.cpu_seconds()
        total = 0.0
        while not enough(len(walls), total, repeats, min_time_s):
            c0, t0 = time.process_time_ns(), time.perf_counter_ns()
            out = m.map(inputs, lengths)
            t1, c1 = time.perf_counter_ns(), time.process_time_ns()
            walls.append((t1 - t0) / 1e9)
            cpus.append((c1 - c0) / 1e9)
            total += walls[-1]
            if workload.fed_back:
                _check(out, walkers)
                inputs = out
            del out
        child_cpu = _cpu_delta(before, tree.cpu_seconds())
        n = len(walls)
        del inputs
        mgr_peak, others_peak, n_procs = tree.peaks()
    finally:
        m.cleanup()
        del m
    leftovers = [] if contender.persistent_runtime else _leftovers(tree, before_pids)
    if leftovers:
        logger.warning("%s left %d process(es) running after cleanup: %s", contender.label, len(leftovers), leftovers)
    return {
        "init_s": init_s,
        "warmup_cycle_s": warm,
        "repeats": n,
        "cycle_s": walls,
        "cycle_s_median": statistics.median(walls),
        "cycle_s_min": min(walls),
        "cycle_s_max": max(walls),
        "manager_cpu_s": cpus,
        "manager_cpu_s_median": statistics.median(cpus),
        # the processes' CPU over the timed block (gaps between cycles included; a process that exits
        # meanwhile takes its CPU along) over the cycles' number: a mean, no longer one per cycle
        "worker_cpu_s_per_cycle": child_cpu / n,
        "manager_rss_base_bytes": base_rss,
        "manager_rss_peak_bytes": mgr_peak,
        "worker_rss_peak_bytes": others_peak,
        "worker_processes": n_procs,
        "rss_method": method,
        "leftover_processes": len(leftovers),
    }
