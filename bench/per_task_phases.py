"""Where the manager's time goes, per task, in SharedMemWorkerMapper cycles of small walkers.

Times each phase of the manager's hot path (encode, write into the slot, push, pop, read the
descriptor, decode with the copy out, the rest of collect, the rest of the stream loop) by
wrapping the functions it calls with ``perf_counter_ns``; the wrappers add well under a
microsecond a call. A developer's tool: it reaches into the mapper's internals, so expect to
adapt it when they change.

    python bench/per_task_phases.py --atoms 1000 10000 --walkers 8 --workers 2 --cycles 300
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

from wemap import shm_mapper
from wemap.benchmarks.report import markdown_table
from wemap.benchmarks.workloads import make_walkers, noop_segment

_ns = time.perf_counter_ns
spent: dict[str, int] = defaultdict(int)


def _timed(name: str, func):
    def wrapper(*args, **kwargs):
        t = _ns()
        try:
            return func(*args, **kwargs)
        finally:
            spent[name] += _ns() - t

    return wrapper


class _RingProxy:
    """The segment's ring with its push and pop timed."""

    def __init__(self, ring) -> None:
        self._ring = ring
        self.push_ready = _timed("push_ready (futex wake when a worker sleeps)", ring.push_ready)
        self.pop_done = _timed("pop_done (waits for results)", ring.pop_done)

    def __getattr__(self, name):
        return getattr(self._ring, name)


class _SegmentProxy:
    def __init__(self, seg) -> None:
        self._seg = seg
        self.ring = _RingProxy(seg.ring)

    def __getattr__(self, name):
        return getattr(self._seg, name)


class PhasedMapper(shm_mapper.SharedMemWorkerMapper):
    def _run_cycle(self, specs):
        t = _ns()
        try:
            return super()._run_cycle(specs)
        finally:
            spent["_run_cycle"] += _ns() - t

    def _stream(self, *args):
        seg, self._segment = self._segment, _SegmentProxy(self._segment)
        t = _ns()
        try:
            return super()._stream(*args)
        finally:
            spent["_stream"] += _ns() - t
            self._segment = seg

    def _collect(self, *args):
        t = _ns()
        try:
            return super()._collect(*args)
        finally:
            spent["_collect"] += _ns() - t


def measure(atoms: int, walkers: int, workers: int, cycles: int) -> list[dict]:
    names = ("encode_call", "write_call", "read_descriptor", "decode_call")
    saved = {n: getattr(shm_mapper, n) for n in names}
    for n in names:
        setattr(shm_mapper, n, _timed(n, saved[n]))
    try:
        ws = make_walkers(walkers, atoms)
        with PhasedMapper(num_workers=workers, segment_func=noop_segment) as m:
            m.map(ws, [0] * walkers)  # warm-up: workers up, slots sized
            spent.clear()
            c0, t0 = time.process_time(), _ns()
            for _ in range(cycles):
                out = m.map(ws, [0] * walkers)
                del out
            wall, cpu = _ns() - t0, time.process_time() - c0
    finally:
        for n, f in saved.items():
            setattr(shm_mapper, n, f)
    per = walkers * cycles
    d = dict(spent)
    push, pop = "push_ready (futex wake when a worker sleeps)", "pop_done (waits for results)"
    rows = [
        ("map, whole", wall),
        ("  outside _run_cycle (argument checks, signal handler)", wall - d["_run_cycle"]),
        ("  encode_call (layout, descriptor pickle)", d["encode_call"]),
        ("  write_call (copy in, descriptor, head)", d["write_call"]),
        ("  " + push, d[push]),
        ("  " + pop, d[pop]),
        ("  read_descriptor", d["read_descriptor"]),
        ("  decode_call (copy out, walker rebuilt)", d["decode_call"]),
        ("  rest of _collect (header checks, timings)", d["_collect"] - d["read_descriptor"] - d["decode_call"]),
        ("  rest of the stream loop", d["_stream"] - d["write_call"] - d[push] - d[pop] - d["_collect"]),
        ("  rest of _run_cycle (segment check, trim)", d["_run_cycle"] - d["_stream"] - d["encode_call"]),
    ]
    out = [{"atoms": atoms, "phase": name, "us_per_task": ns / per / 1e3} for name, ns in rows]
    out.append({"atoms": atoms, "phase": "manager CPU (process_time)", "us_per_task": cpu / per * 1e6})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=int, nargs="+", default=[1_000, 10_000])
    ap.add_argument("--walkers", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cycles", type=int, default=300)
    args = ap.parse_args(argv)
    rows = [r for a in args.atoms for r in measure(a, args.walkers, args.workers, args.cycles)]
    print(f"\nNo-op segment, {args.walkers} walkers, {args.workers} workers, {args.cycles} cycles, µs per task:\n")
    print(markdown_table(rows, [("atoms", "atoms", ",d"), ("phase", "phase", "s"), ("us_per_task", "µs / task", ".1f")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
