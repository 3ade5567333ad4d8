"""Benchmark the shared-memory slot ring: slot handoff latency and slot fill speed.

(1) One-way handoff latency of a slot index between two processes: the parent pushes a
    slot on the ready ring, an echo process pops it and pushes it on the done ring, the
    parent pops it. One-way = round trip / 2. Both sides block (spin briefly, then
    futex), as the mapper does.
(2) Filling a slot's input region with a walker of ``--atoms`` atoms (float64 positions
    and velocities, 2 x 24 MB at 1M atoms) against ``np.copyto`` of the same bytes into
    a plain numpy array, interleaved in the same run.

    python bench/ring_handoff.py [--round-trips 20000] [--atoms 1000000] [--json PATH]

Writes raw numbers and the environment as JSON (default bench/results/ring_handoff.json)
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from wemap._ring import RingClosed
from wemap.segment import Segment

HANDOFF_GOAL_US = 20.0
FILL_GOAL_RATIO = 1.1


def _echo(seg: Segment) -> None:
    """Bounce every slot from the ready ring back on the done ring until closed."""
    ring = seg.ring
    pop, push = ring.pop_ready, ring.push_done
    try:
        while True:
            push(pop())
    except RingClosed:
        pass
    finally:
        seg.close()


def bench_handoff(round_trips: int, warmup: int, method: str) -> dict:
    ctx = mp.get_context(method)
    with Segment.create(2, 64) as seg:
        ring = seg.ring
        child = ctx.Process(target=_echo, args=(seg,), daemon=True)
        child.start()
        try:
            push, pop = ring.push_ready, ring.pop_done
            clock = time.perf_counter_ns
            rtt = np.empty(round_trips, np.int64)
            for _ in range(warmup):
                push(0)
                pop()
            for i in range(round_trips):
                t0 = clock()
                push(0)
                pop()
                rtt[i] = clock() - t0
            # the binding's own cost: push + pop in one process, no handoff
            n_local = min(round_trips, 20000)
            t0 = clock()
            for _ in range(n_local):
                ring.push_done(1)
                ring.pop_done(0)
            local_ns = (clock() - t0) / n_local
        finally:
            ring.close_ready()
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join()
    one_way_us = rtt / 2 / 1000
    return {
        "round_trips": round_trips,
        "warmup": warmup,
        "start_method": method,
        "one_way_us": {
            "median": float(np.median(one_way_us)),
            "p99": float(np.percentile(one_way_us, 99)),
            "mean": float(one_way_us.mean()),
            "min": float(one_way_us.min()),
        },
        "local_push_pop_us": local_ns / 1000,
        "goal_median_us": HANDOFF_GOAL_US,
    }


def bench_fill(atoms: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    pos = rng.standard_normal((atoms, 3))
    vel = rng.standard_normal((atoms, 3))
    nbytes = pos.nbytes + vel.nbytes
    plain = np.empty(nbytes, np.uint8)
    with Segment.create(1, nbytes) as seg:
        region = seg.ring.input_view(0)
        shm_pos = region[: pos.nbytes].view(np.float64).reshape(atoms, 3)
        shm_vel = region[pos.nbytes : nbytes].view(np.float64).reshape(atoms, 3)
        np_pos = plain[: pos.nbytes].view(np.float64).reshape(atoms, 3)
        np_vel = plain[pos.nbytes :].view(np.float64).reshape(atoms, 3)
        clock = time.perf_counter_ns
        t_shm, t_np = [], []
        for i in range(repeats + 2):  # the first two rounds fault the pages in
            order = ((shm_pos, shm_vel, t_shm), (np_pos, np_vel, t_np))
            for dpos, dvel, out in order if i % 2 else order[::-1]:
                t0 = clock()
                np.copyto(dpos, pos)
                np.copyto(dvel, vel)
                dt = clock() - t0
                if i >= 2:
                    out.append(dt)
        ok = np.array_equal(shm_pos, pos) and np.array_equal(shm_vel, vel)
        del region, shm_pos, shm_vel, order, dpos, dvel  # views out before the segment closes
    ms_shm = float(np.median(t_shm)) / 1e6
    ms_np = float(np.median(t_np)) / 1e6
    return {
        "atoms": atoms,
        "bytes": nbytes,
        "repeats": repeats,
        "slot_fill_ms": {"median": ms_shm, "min": min(t_shm) / 1e6},
        "np_copyto_ms": {"median": ms_np, "min": min(t_np) / 1e6},
        "ratio_median": ms_shm / ms_np,
        "slot_fill_GBps": nbytes / (ms_shm / 1e3) / 1e9,
        "verified": bool(ok),
        "goal_ratio": FILL_GOAL_RATIO,
    }


def environment() -> dict:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "commit": commit,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def table(res: dict) -> str:
    h, f = res["handoff"], res["fill"]
    ow = h["one_way_us"]
    mark = lambda ok: "yes" if ok else "NO"  # noqa: E731
    rows = [
        "| measurement | result | goal | met |",
        "| --- | --- | --- | --- |",
        f"| handoff one-way, median | {ow['median']:.1f} us | <= {HANDOFF_GOAL_US:.0f} us "
        f"| {mark(ow['median'] <= HANDOFF_GOAL_US)} |",
        f"| handoff one-way, p99 | {ow['p99']:.1f} us | | |",
        f"| push + pop, same process | {h['local_push_pop_us']:.2f} us | | |",
        f"| fill slot, {f['atoms']:,} atoms ({f['bytes'] / 1e6:.0f} MB), median | {f['slot_fill_ms']['median']:.2f} ms "
        f"({f['slot_fill_GBps']:.1f} GB/s) | | |",
        f"| np.copyto into plain array, median | {f['np_copyto_ms']['median']:.2f} ms | | |",
        f"| fill / np.copyto | {f['ratio_median']:.3f} | <= {FILL_GOAL_RATIO} "
        f"| {mark(f['ratio_median'] <= FILL_GOAL_RATIO)} |",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--round-trips", type=int, default=20000, help="timed ping-pong round trips")
    ap.add_argument("--warmup", type=int, default=2000, help="untimed round trips first")
    ap.add_argument("--atoms", type=int, default=1_000_000, help="atoms in the filled walker")
    ap.add_argument("--repeats", type=int, default=20, help="timed fills of each kind")
    ap.add_argument("--start-method", default="forkserver", choices=mp.get_all_start_methods())
    ap.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "ring_handoff.json")
    args = ap.parse_args(argv)

    res = {
        "environment": environment(),
        "handoff": bench_handoff(args.round_trips, args.warmup, args.start_method),
        "fill": bench_fill(args.atoms, args.repeats),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    print(f"\nraw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
