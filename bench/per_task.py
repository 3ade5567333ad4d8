"""Per-task cost of SharedMemWorkerMapper at small sizes, beside three memcpy floors.

The transport table's per-task figure at 10k atoms moves with how the cycles are run, so this
measures it both ways in one run: *interleaved* (the mappers take turns, cycle by cycle, so no
CPU idles between a mapper's cycles) and *alone* (one mapper's cycles back to back, with the
idle gaps a VM's vCPUs may halt in). Floors: copy in + copy out into arrays that exist, each
walker out right after it went in (the issue's floor, as the transport matrix times it:
`wemap.benchmarks.measure.floor_cycle`; the bytes are still in cache); the same
in a mapper's order, every walker in before any comes out (a walker must pass a worker between
its two copies); and with the copy out into fresh arrays (what new walkers cost in page faults).

    python bench/per_task.py --atoms 10000 --walkers 8 --workers 2 --cycles 60
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import wemap
from wemap.benchmarks.measure import floor_cycle
from wemap.benchmarks.report import report_rows
from wemap.benchmarks.workloads import make_walkers, noop_segment


def floors(walkers, cycles: int) -> dict[str, float]:
    """Median seconds per cycle: copy in and out with every buffer existing, and with fresh output."""
    src = [v for w in walkers for v in w.state.values() if isinstance(v, np.ndarray)]
    slots = [np.empty_like(a) for a in src]
    back = [np.empty_like(a) for a in src]
    matrix_floor = floor_cycle(walkers)  # the transport matrix's own floor
    warm, ordered, fresh = [], [], []
    for _ in range(cycles):
        warm.append(matrix_floor())
        t0 = time.perf_counter()
        for a, s in zip(src, slots):
            np.copyto(s, a)
        for s, b in zip(slots, back):
            np.copyto(b, s)
        ordered.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for a, s in zip(src, slots):
            np.copyto(s, a)
        out = [s.copy() for s in slots]
        fresh.append(time.perf_counter() - t0)
        del out
    return {
        "memcpy floor": statistics.median(warm),
        "memcpy floor, all in then all out": statistics.median(ordered),
        "memcpy floor, fresh output": statistics.median(fresh),
    }


def cycle(m, walkers) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = m.map(walkers, [0] * len(walkers))
    t1, c1 = time.perf_counter(), time.process_time()
    del out
    return t1 - t0, c1 - c0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=int, default=10_000)
    ap.add_argument("--walkers", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cycles", type=int, default=60)
    ap.add_argument("--out", default="bench/results/per_task.json")
    args = ap.parse_args(argv)
    walkers = make_walkers(args.walkers, args.atoms)
    mappers = {"no-op": wemap.SharedMemWorkerMapper(num_workers=args.workers, segment_func=noop_segment)}
    times: dict[tuple[str, str], list] = {}
    try:
        for m in mappers.values():
            m.init()
            cycle(m, walkers)  # warm-up: workers up, slots sized, result blocks made
        for _ in range(args.cycles):
            for name, m in mappers.items():
                times.setdefault((name, "interleaved"), []).append(cycle(m, walkers))
        for name, m in mappers.items():
            times[(name, "alone")] = [cycle(m, walkers) for _ in range(args.cycles)]
    finally:
        for m in mappers.values():
            m.cleanup()
    n = args.walkers
    fl = floors(walkers, args.cycles)
    rows = [{"what": k, "order": "", "us_per_task": 1e6 * v / n, "over_floor_us": 1e6 * (v - fl["memcpy floor"]) / n,
             "cpu_us_per_task": None} for k, v in fl.items()]
    for (name, order), samples in times.items():
        wall = statistics.median(t for t, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        rows.append({"what": f"SharedMemWorkerMapper ({name})", "order": order, "us_per_task": 1e6 * wall / n,
                     "over_floor_us": 1e6 * (wall - fl["memcpy floor"]) / n, "cpu_us_per_task": 1e6 * cpu / n})
    title = (f"No-op segment, {n} walkers x {args.atoms:,} atoms, {args.workers} workers, "
             f"median of {args.cycles} cycles:")
    report_rows("per_task", args, title, rows, [("what", "what", "s"), ("order", "cycles run", "s"),
                                                ("us_per_task", "µs / task", ".1f"),
                                                ("over_floor_us", "µs / task over floor", ".1f"),
                                                ("cpu_us_per_task", "manager CPU µs / task", ".1f")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
