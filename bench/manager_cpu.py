"""Manager CPU while segments run: does the mapper sleep in the kernel or burn a core polling?

Runs ``--walkers`` segments that each sleep ``--seconds`` on ``--workers`` workers and
measures the manager process's own CPU time (user + system) over the ``map`` call, for every
mapper available, in one run. Goal: ≤ 2% of a core for wemap's process mappers.

    python bench/manager_cpu.py --seconds 1 --workers 2 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, write_json  # noqa: E402

import wemap  # noqa: E402


def sleep_segment(x, seconds):
    time.sleep(seconds)
    return x


def mapper_factories(workers: int) -> dict:
    out = {"WorkerMapper": lambda: wemap.WorkerMapper(num_workers=workers, segment_func=sleep_segment)}
    shm = getattr(wemap, "SharedMemWorkerMapper", None)
    if shm is not None:
        out["SharedMemWorkerMapper"] = lambda: shm(num_workers=workers, segment_func=sleep_segment)
    try:
        from wepy.work_mapper.mapper import WorkerMapper as WepyWorkerMapper

        out["wepy WorkerMapper"] = lambda: WepyWorkerMapper(num_workers=workers, segment_func=sleep_segment)
    except ImportError:
        print("wepy not installed: its WorkerMapper is left out", file=sys.stderr)
    return out


def measure(factory, workers: int, seconds: float, repeats: int) -> dict:
    m = factory()
    m.init(segment_func=sleep_segment, num_workers=workers)
    try:
        m.map(range(workers), [0.01] * workers)  # warm-up: workers started and importing done
        fractions, walls = [], []
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            m.map(range(workers), [seconds] * workers)
            c1, t1 = time.process_time(), time.perf_counter()
            cpu = c1 - c0  # this process, all threads, ns resolution
            fractions.append(cpu / (t1 - t0))
            walls.append(t1 - t0)
    finally:
        m.cleanup()
    return {
        "manager_cpu_fraction_median": statistics.median(fractions),
        "manager_cpu_fraction_max": max(fractions),
        "wall_s_median": statistics.median(walls),
        "fractions": fractions,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="length of each sleeping segment")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results/manager_cpu.json")
    args = ap.parse_args(argv)
    rows = []
    for name, factory in mapper_factories(args.workers).items():
        r = measure(factory, args.workers, args.seconds, args.repeats)
        rows.append({"mapper": name, **r, "cpu_pct": 100 * r["manager_cpu_fraction_median"],
                     "cpu_pct_max": 100 * r["manager_cpu_fraction_max"]})
    print(f"Manager CPU while {args.workers} x {args.seconds:g} s segments run on {args.workers} workers "
          f"(median of {args.repeats}):\n")
    print(markdown_table(rows, [("mapper", "mapper", "s"), ("cpu_pct", "manager CPU % of a core", ".2f"),
                                ("cpu_pct_max", "max %", ".2f"), ("wall_s_median", "wall s", ".3f")]))
    path = write_json(args.out, {"benchmark": "manager_cpu", "args": vars(args), "machine": machine(), "rows": rows})
    print(f"\nraw figures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
