"""Transport cost per cycle: how long does a mapper take to move walkers to workers and back?

A no-op segment (it hands its walker back unchanged) isolates the transport. Every mapper
available runs the same cells in one run, beside the memcpy floor: copying the same bytes in
and out once with ``np.copyto`` into buffers that already exist — what an ideal transport
must do at least. Ratios are taken only between figures of this run.

A thin front end to ``wemap bench --workload noop`` (`wemap.benchmarks`); any other
``wemap bench`` option is passed through.

    python bench/transport.py --atoms 10000 100000 1000000 --walkers 8 --workers 2 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wemap.benchmarks import main as bench_main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Other options go to wemap bench (python -m wemap.benchmarks --help).")
    ap.add_argument("--atoms", nargs="+", default=["10000", "100000", "1000000"], help="atoms per walker")
    ap.add_argument("--walkers", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mappers", nargs="*", help="subset of mapper names to run (default: all available)")
    ap.add_argument("--out", default="bench/results/transport.json", help="JSON path; the PNG goes beside it")
    args, rest = ap.parse_known_args(argv)
    out = Path(args.out)
    forwarded = [
        "--workload", "noop", "--no-openmm",
        "--atoms", *args.atoms, "--walkers", str(args.walkers), "--workers", str(args.workers),
        "--repeats", str(args.repeats), "--out", str(out.parent), "--name", out.stem,
    ]
    if args.mappers:
        forwarded += ["--mappers", *args.mappers]
    return bench_main(forwarded + rest)


if __name__ == "__main__":
    sys.exit(main())
