"""What a pause before a cycle costs: SharedMemWorkerMapper no-op cycles back to back, and after
a sleep or the transport matrix's own bookkeeping (psutil over the process tree).

A WE run resamples between cycles, so its cycles start after a pause, with the workers asleep
and the caches cold (the transport matrix, which times cycles back to back as it times the floor,
used to pause for psutil before each one). This measures that cost on its own, in one mapper, the
conditions taking turns a few cycles at a time so the host's drift spreads over all of them; each
cycle is followed by the same pause and a cycle of the memcpy floor, since on a VM plain copies
also run slower after a sleep.

    python bench/cycle_gap.py --atoms 10000 --walkers 8 --workers 2 --cycles 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import wemap
from wemap.benchmarks.measure import ProcessTree, floor_cycle
from wemap.benchmarks.report import report_rows
from wemap.benchmarks.workloads import make_walkers, noop_segment

#: cycles each condition runs before the next takes its turn
TURN = 5


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=int, default=10_000)
    ap.add_argument("--walkers", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--out", default="bench/results/cycle_gap.json")
    args = ap.parse_args(argv)
    walkers = make_walkers(args.walkers, args.atoms)
    tree = ProcessTree()
    pauses = {
        "none (back to back)": lambda: None,
        "1 ms sleep": lambda: time.sleep(0.001),
        "psutil over the process tree": tree.cpu_seconds,  # what the matrix once did between cycles
        "20 ms sleep": lambda: time.sleep(0.02),
    }
    rows = []
    times: dict[str, list[float]] = {name: [] for name in pauses}
    floors: dict[str, list[float]] = {name: [] for name in pauses}
    floor = floor_cycle(walkers)
    with wemap.SharedMemWorkerMapper(num_workers=args.workers, segment_func=noop_segment) as m:
        for _ in range(10):
            m.map(walkers, [0] * args.walkers)
            floor()
        for _ in range(max(1, args.cycles // TURN)):
            for name, pause in pauses.items():
                for _ in range(min(TURN, args.cycles)):
                    pause()
                    t0 = time.perf_counter()
                    out = m.map(walkers, [0] * args.walkers)
                    times[name].append(time.perf_counter() - t0)
                    del out
                    pause()  # the floor after the same pause: the machine, not the mapper, may be slow after one
                    floors[name].append(floor())
    n = args.walkers
    for name, samples in times.items():
        med, fl = statistics.median(samples), statistics.median(floors[name])
        rows.append({"pause": name, "cycle_ms": med * 1e3, "us_per_task": med / n * 1e6, "floor_ms": fl * 1e3,
                     "over_floor_us": (med - fl) / n * 1e6})
    count = len(next(iter(times.values())))
    title = (f"No-op cycles, {args.walkers} walkers x {args.atoms:,} atoms, {args.workers} workers, "
             f"median of {count} cycles after each pause, {TURN} at a time in turns, each followed by the same "
             f"pause and a memcpy floor cycle:")
    report_rows("cycle_gap", args, title, rows,
                [("pause", "before each cycle", "s"), ("cycle_ms", "cycle ms", ".3f"),
                 ("us_per_task", "µs / task", ".1f"), ("floor_ms", "floor ms, same pause", ".3f"),
                 ("over_floor_us", "µs / task over that floor", ".1f")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
