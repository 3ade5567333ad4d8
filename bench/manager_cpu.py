"""Manager CPU while segments run: does the mapper sleep in the kernel or burn a core polling?

Runs ``--workers`` segments that each sleep ``--seconds`` on ``--workers`` workers (small
walkers, 1,000 atoms) and measures the manager process's own CPU time (user + system, all
threads) over the ``map`` call, for every mapper asked for, in one run. Goal: ≤ 2% of a core
for wemap's process mappers.

A thin front end to ``wemap bench --workload sleep`` (`wemap.benchmarks`); any other
``wemap bench`` option is passed through.

    python bench/manager_cpu.py --seconds 1 --workers 2 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wemap.benchmarks.cli import build_parser, collect, format_report
from wemap.benchmarks.report import markdown_table

GOAL_PCT = 2.0
DEFAULT_MAPPERS = ["WorkerMapper", "SharedMemWorkerMapper", "wepy"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Other options go to wemap bench (python -m wemap.benchmarks --help).")
    ap.add_argument("--seconds", type=float, default=1.0, help="length of each sleeping segment")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mappers", nargs="+", default=DEFAULT_MAPPERS,
                    help=f"mappers to run (default: {' '.join(DEFAULT_MAPPERS)}; "
                         "wepy's is left out when not installed)")
    ap.add_argument("--out", default="bench/results/manager_cpu.json", help="JSON path; the PNG goes beside it")
    args, rest = ap.parse_known_args(argv)
    out = Path(args.out)
    forwarded = [
        "--workload", "sleep", "--sleep-ms", str(1e3 * args.seconds), "--no-openmm",
        "--atoms", "1000", "--walkers", str(args.workers), "--workers", str(args.workers),
        "--repeats", str(args.repeats), "--out", str(out.parent), "--name", out.stem, "--mappers", *args.mappers,
    ]
    payload = collect(build_parser("bench/manager_cpu.py").parse_args(forwarded + rest))
    print(format_report(payload))
    rows = [dict(r, cpu_pct=100 * r["manager_cpu_frac"],
                 cpu_pct_max=100 * max(c / w for c, w in zip(r["manager_cpu_s"], r["cycle_s"])))
            for r in payload["rows"] if r["status"] == "ok" and r["key"] != "floor"]
    print(f"\nManager CPU while {args.workers} x {args.seconds:g} s segments run on {args.workers} workers "
          f"(median of {args.repeats}; goal ≤ {GOAL_PCT:g}% for wemap's process mappers):\n")
    print(markdown_table(rows, [("mapper", "mapper", "s"), ("cpu_pct", "manager CPU % of a core", ".2f"),
                                ("cpu_pct_max", "max %", ".2f"), ("cycle_s_median", "wall s", ".3f")]))
    print(f"\nraw figures: {payload['files']['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
