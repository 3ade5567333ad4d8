"""What a pause before a cycle costs: SharedMemWorkerMapper no-op cycles back to back, and after
a sleep or the transport matrix's own bookkeeping (psutil over the process tree).

A WE run resamples between cycles, so its cycles start after a pause, with the workers asleep
and the caches cold (the transport matrix, which times cycles back to back as it times the floor,
used to pause for psutil before each one). This measures that cost on its own, in one mapper, the
conditions taking turns a few cycles at a time so the host's drift spreads over all of them.

    python bench/cycle_gap.py --atoms 10000 --walkers 8 --workers 2 --cycles 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import psutil

import wemap
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
    me = psutil.Process()
    pauses = {
        "none (back to back)": lambda: None,
        "1 ms sleep": lambda: time.sleep(0.001),
        "psutil over the process tree": lambda: [c.cpu_times() for c in me.children(recursive=True)],
        "20 ms sleep": lambda: time.sleep(0.02),
    }
    rows = []
    times: dict[str, list[float]] = {name: [] for name in pauses}
    with wemap.SharedMemWorkerMapper(num_workers=args.workers, segment_func=noop_segment) as m:
        for _ in range(10):
            m.map(walkers, [0] * args.walkers)
        for _ in range(max(1, args.cycles // TURN)):
            for name, pause in pauses.items():
                for _ in range(min(TURN, args.cycles)):
                    pause()
                    t0 = time.perf_counter()
                    out = m.map(walkers, [0] * args.walkers)
                    times[name].append(time.perf_counter() - t0)
                    del out
    for name, samples in times.items():
        med = statistics.median(samples)
        rows.append({"pause": name, "cycle_ms": med * 1e3, "us_per_task": med / args.walkers * 1e6})
    n = len(next(iter(times.values())))
    title = (f"No-op cycles, {args.walkers} walkers x {args.atoms:,} atoms, {args.workers} workers, "
             f"median of {n} cycles after each pause, {TURN} at a time in turns:")
    report_rows("cycle_gap", args, title, rows,
                [("pause", "before each cycle", "s"), ("cycle_ms", "cycle ms", ".3f"), ("us_per_task", "µs / task", ".1f")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
