"""Fault soak: run WE-style cycles while a thread SIGKILLs random workers, then count.

For every process mapper: ``--cycles`` cycles of ``--walkers`` walkers with a deterministic
segment (a displacement plus a short sleep, so kills land mid-segment), while a killer thread
sends SIGKILL to a random live worker every ``--kill-every`` seconds. The walkers that come
back are compared with a fault-free run of the reference `Mapper`; after ``cleanup`` it counts
surviving worker processes and segments left in ``/dev/shm``.

    python bench/fault_soak.py --cycles 20 --walkers 8 --workers 2 --kill-every 0.3
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time

import numpy as np
import psutil

import wemap
from wemap.benchmarks.report import report_rows
from wemap.pool import multiprocessing_helper_pids


def segment(walker, segment_length, **kwargs):
    time.sleep(0.02)
    state = dict(walker.state)
    state["positions"] = walker.state["positions"] + 0.001 * segment_length * (1 + kwargs["walker_idx"])
    return wemap.Walker(state, walker.weight)


def initial(n_walkers: int, n_atoms: int) -> list:
    rng = np.random.default_rng(1)
    return [wemap.Walker({"positions": rng.random((n_atoms, 3)), "velocities": rng.random((n_atoms, 3))},
                         1.0 / n_walkers) for _ in range(n_walkers)]


def run(mapper, walkers, cycles):
    for c in range(cycles):
        n = len(walkers)
        walkers = mapper.map(walkers, [10] * n, cycle_idx=[c] * n, walker_idx=range(n))
    return walkers


def worker_pids(mapper) -> list[int]:
    pool = getattr(mapper, "_pool", None)
    return [w.pid for w in pool.workers] if pool is not None else []


def soak(name: str, factory, walkers, cycles: int, kill_every: float, seed: int) -> dict:
    ours = f"wemap_{os.getpid()}_"
    before_shm = {n for n in os.listdir("/dev/shm") if n.startswith(ours)}
    me = psutil.Process()
    rng = random.Random(seed)
    mapper = factory()
    mapper.init(segment_func=segment)
    kills = []
    stop = threading.Event()

    def killer():
        while not stop.wait(kill_every):
            pids = worker_pids(mapper)
            if pids:
                pid = rng.choice(pids)
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
                except ProcessLookupError:
                    pass

    t = threading.Thread(target=killer, daemon=True)
    t0 = time.perf_counter()
    t.start()
    error = None
    try:
        out = run(mapper, walkers, cycles)
    except Exception as exc:  # a soak reports, it does not stop at the first failure
        out, error = None, f"{type(exc).__name__}: {exc}"
    finally:
        stop.set()
        t.join()
        recovered = mapper.recovered_segments
        mapper.cleanup()
    wall = time.perf_counter() - t0
    time.sleep(1.0)
    helpers = multiprocessing_helper_pids()
    orphans = [p.pid for p in me.children(recursive=True) if p.pid not in helpers and p.status() != "zombie"]
    leaked = sorted({n for n in os.listdir("/dev/shm") if n.startswith(ours)} - before_shm)
    return {"mapper": name, "cycles": cycles, "walkers": len(walkers), "faults_injected": len(kills),
            "recovered_segments": recovered, "error": error, "out": out, "orphans": len(orphans),
            "leaked_segments": len(leaked), "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--walkers", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--atoms", type=int, default=10_000)
    ap.add_argument("--kill-every", type=float, default=0.3, help="seconds between SIGKILLs")
    ap.add_argument("--max-retries", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/fault_soak.json")
    args = ap.parse_args(argv)

    walkers = initial(args.walkers, args.atoms)
    with wemap.Mapper(segment_func=segment) as ref_mapper:
        reference = run(ref_mapper, walkers, args.cycles)
    factories = {
        "WorkerMapper": lambda: wemap.WorkerMapper(num_workers=args.workers, max_retries=args.max_retries),
        "SharedMemWorkerMapper": lambda: wemap.SharedMemWorkerMapper(num_workers=args.workers,
                                                                      max_retries=args.max_retries),
    }
    rows = []
    for name, factory in factories.items():
        r = soak(name, factory, walkers, args.cycles, args.kill_every, args.seed)
        out = r.pop("out")
        r["walkers_lost"] = args.walkers if out is None else sum(a != b for a, b in zip(out, reference))
        rows.append(r)
    title = (f"{args.cycles} cycles x {args.walkers} walkers x {args.atoms} atoms on {args.workers} workers, "
             f"a SIGKILL to a random worker every {args.kill_every} s:")
    report_rows("fault_soak", args, title, rows, [
        ("mapper", "mapper", "s"), ("faults_injected", "faults injected", "d"),
        ("recovered_segments", "walkers re-run", "d"), ("walkers_lost", "walkers lost", "d"),
        ("orphans", "orphan processes", "d"), ("leaked_segments", "leaked segments", "d"),
        ("wall_s", "wall s", ".1f"), ("error", "error", "s")])
    return 0 if all(r["walkers_lost"] == 0 and not r["orphans"] and not r["leaked_segments"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
