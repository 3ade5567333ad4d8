"""Where a small walker's per-task cost goes: CPU per task of the manager and of each worker.

Runs ``SharedMemWorkerMapper`` (no-op segment, the same walkers every cycle) back to back for
``--seconds`` and prints, per task, the wall time and each process's user and system CPU and its
voluntary and involuntary context switches (psutil). On a machine with fewer cores than
processes, wall time follows the sum of the CPU columns.

    python bench/cpu_per_task.py --atoms 1000 --walkers 8 --workers 2 --seconds 4
"""

from __future__ import annotations

import argparse
import sys
import time

import psutil

import wemap
from wemap.benchmarks.workloads import make_walkers, noop_segment


def snapshot(procs: list[psutil.Process]) -> list[tuple[float, float, int, int]]:
    out = []
    for p in procs:
        t, c = p.cpu_times(), p.num_ctx_switches()
        out.append((t.user, t.system, c.voluntary, c.involuntary))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=int, default=1000)
    ap.add_argument("--walkers", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args(argv)
    walkers = make_walkers(args.walkers, args.atoms)
    segment_length = [0] * args.walkers
    with wemap.SharedMemWorkerMapper(num_workers=args.workers, segment_func=noop_segment) as m:
        for _ in range(50):  # warm-up: workers up, ring and arena sized
            m.map(walkers, segment_length)
        me = psutil.Process()
        workers = [p for p in me.children(recursive=True) if p.cpu_times().user > 0.05]  # not the idle helpers
        procs = [me, *workers]
        before, cycles, t0 = snapshot(procs), 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            m.map(walkers, segment_length)
            cycles += 1
        wall, after = time.perf_counter() - t0, snapshot(procs)
    tasks = cycles * args.walkers
    print(f"{args.walkers} walkers x {args.atoms:,} atoms, {args.workers} workers, {cycles} cycles: "
          f"{1e6 * wall / tasks:.1f} µs wall a task")
    print("| process | user µs / task | system µs / task | voluntary switches / task | involuntary / task |")
    print("|---|---|---|---|---|")
    for k, (a, b) in enumerate(zip(before, after)):
        name = "manager" if k == 0 else f"worker (pid {procs[k].pid})"
        print(f"| {name} | {1e6 * (b[0] - a[0]) / tasks:.1f} | {1e6 * (b[1] - a[1]) / tasks:.1f} | "
              f"{(b[2] - a[2]) / tasks:.2f} | {(b[3] - a[3]) / tasks:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
