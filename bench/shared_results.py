"""How SharedMemWorkerMapper's three ways of returning results compare, size by size.

``shared_results`` (workers write results into the shared result arena; on from 1 MiB a
walker), the manager's copy out of the slot (``shared_results=False``) and ``zero_copy=True``
(views of the slots, valid until the next map), with a no-op segment, with one that hands
back new arrays (as MD does), and with that one in a loop that maps each cycle's results in
the next (as a WE run does; not for zero_copy, whose results end with the next map). The modes take turns cycle by cycle, so they share the machine's
noise. The arena is forced on at every size here (its 1 MiB threshold is what this measures).

    python bench/shared_results.py --atoms 10000 100000 1000000 --walkers 8 --workers 2 --cycles 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import wemap
from wemap import shm_mapper
from wemap.benchmarks.report import report_rows
from wemap.benchmarks.workloads import fresh_segment, make_walkers, noop_segment

MODES = {
    "shared results": {},
    "copy (shared_results=False)": {"shared_results": False},
    "zero_copy": {"zero_copy": True},
}
#: segment name -> (segment function, whether each cycle maps the previous cycle's results, as a WE loop does)
SEGMENTS = {"no-op": (noop_segment, False), "new arrays": (fresh_segment, False),
            "new arrays, fed back": (fresh_segment, True)}
#: zero_copy results live only until the next map: they are not fed back
FED_BACK_MODES = ("shared results", "copy (shared_results=False)")


def measure(atoms: int, walkers: int, workers: int, cycles: int) -> list[dict]:
    ws = make_walkers(walkers, atoms)
    rows = []
    for seg_name, (seg, fed_back) in SEGMENTS.items():
        mappers = {k: wemap.SharedMemWorkerMapper(num_workers=workers, segment_func=seg, **kw) for k, kw in MODES.items()
                   if not fed_back or k in FED_BACK_MODES}
        times: dict[str, list[float]] = {k: [] for k in mappers}
        inputs = {k: ws for k in mappers}
        try:
            for k, m in mappers.items():
                m.init()
                out = m.map(ws, [0] * walkers)  # warm-up: workers up, slots and blocks made
                if fed_back:
                    inputs[k] = out
                del out
            for _ in range(cycles):
                for k, m in mappers.items():
                    t0 = time.perf_counter()
                    out = m.map(inputs[k], [0] * walkers)
                    times[k].append(time.perf_counter() - t0)
                    if fed_back:
                        inputs[k] = out  # the last cycle's walkers go now, this one's stay until the next
                    del out
        finally:
            for m in mappers.values():
                m.cleanup()
        for k, v in times.items():
            med = statistics.median(v)
            rows.append({"atoms": atoms, "segment": seg_name, "mode": k, "cycle_s": med, "us_per_task": 1e6 * med / walkers,
                         "cycles_s": v})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--walkers", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--out", default="bench/results/shared_results.json")
    args = ap.parse_args(argv)
    shm_mapper.SHARED_RESULTS_MIN_BYTES = 0  # the arena at every size: its threshold is what is measured
    rows = [r for a in args.atoms for r in measure(a, args.walkers, args.workers, args.cycles)]
    title = f"{args.walkers} walkers, {args.workers} workers, median of {args.cycles} cycles (modes interleaved):"
    report_rows("shared_results", args, title, rows, [("atoms", "atoms", ",d"), ("segment", "segment", "s"),
                                                      ("mode", "results", "s"), ("cycle_s", "cycle s", ".5f"),
                                                      ("us_per_task", "µs / task", ".1f")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
