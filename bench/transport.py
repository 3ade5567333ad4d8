"""Transport cost per cycle: how long does a mapper take to move walkers to workers and back?

A no-op segment (it hands its walker back unchanged) isolates the transport. Every mapper
available runs the same cells in one run, beside the memcpy floor: copying the same bytes in
and out once with ``np.copyto`` into buffers that already exist — what an ideal transport
must do at least. Ratios are taken only between figures of this run.

    python bench/transport.py --atoms 10000 100000 1000000 --walkers 8 --workers 2 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, write_json  # noqa: E402

import wemap  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # progress bar is a nicety
    def tqdm(it, **kw):
        return it


def noop_segment(walker, segment_length, **kwargs):
    return walker


def make_walkers(n_walkers: int, n_atoms: int) -> list[wemap.Walker]:
    rng = np.random.default_rng(0)
    return [
        wemap.Walker(
            {
                "positions": rng.random((n_atoms, 3)),
                "velocities": rng.random((n_atoms, 3)),
                "box_vectors": np.eye(3) * 5.0,
            },
            1.0 / n_walkers,
        )
        for _ in range(n_walkers)
    ]


def walker_bytes(w: wemap.Walker) -> int:
    return sum(v.nbytes for v in w.state.values() if isinstance(v, np.ndarray))


def mappers(workers: int) -> dict:
    out = {
        "Mapper": lambda: wemap.Mapper(segment_func=noop_segment),
        "WorkerMapper": lambda: wemap.WorkerMapper(num_workers=workers, segment_func=noop_segment),
        "SharedMemWorkerMapper": lambda: wemap.SharedMemWorkerMapper(num_workers=workers, segment_func=noop_segment),
    }
    try:
        from wepy.work_mapper.mapper import Worker as WepyWorker
        from wepy.work_mapper.mapper import WorkerMapper as WepyWorkerMapper

        out["wepy WorkerMapper"] = lambda: WepyWorkerMapper(
            num_workers=workers, segment_func=noop_segment, worker_type=WepyWorker
        )
    except ImportError:
        print("wepy not installed: its WorkerMapper is left out", file=sys.stderr)
    return out


def memcpy_floor(walkers: list[wemap.Walker], repeats: int) -> float:
    """Median seconds to copy every array of every walker in once and out once."""
    slots = [{k: np.empty_like(v) for k, v in w.state.items() if isinstance(v, np.ndarray)} for w in walkers]
    back = [{k: np.empty_like(v) for k, v in s.items()} for s in slots]
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        for w, s, b in zip(walkers, slots, back):
            for k, dst in s.items():
                np.copyto(dst, w.state[k])
            for k, dst in b.items():
                np.copyto(dst, s[k])
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def time_mapper(factory, walkers: list, workers: int, repeats: int) -> dict:
    n = len(walkers)
    m = factory()
    m.init(segment_func=noop_segment, num_workers=workers)
    try:
        out = m.map(walkers, [0] * n)  # warm-up: workers up, slots sized, pages touched
        assert len(out) == n
        del out
        walls, cpus = [], []
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            out = m.map(walkers, [0] * n)
            t1, c1 = time.perf_counter(), time.process_time()
            walls.append(t1 - t0)
            cpus.append(c1 - c0)
            del out
    finally:
        m.cleanup()
    return {
        "cycle_s_median": statistics.median(walls),
        "cycle_s_min": min(walls),
        "cycle_s_max": max(walls),
        "manager_cpu_s_median": statistics.median(cpus),
        "cycle_s_all": walls,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--walkers", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mappers", nargs="*", help="subset of mapper names to run (default: all available)")
    ap.add_argument("--out", default="bench/results/transport.json")
    args = ap.parse_args(argv)

    factories = mappers(args.workers)
    if args.mappers:
        factories = {k: v for k, v in factories.items() if k in args.mappers}
    rows = []
    cells = [(a, name) for a in args.atoms for name in ["memcpy floor", *factories]]
    walkers_by_atoms: dict[int, list] = {}
    for n_atoms, name in tqdm(cells, desc="transport", unit="cell"):
        walkers = walkers_by_atoms.setdefault(n_atoms, make_walkers(args.walkers, n_atoms))
        nbytes = sum(walker_bytes(w) for w in walkers)
        if name == "memcpy floor":
            r = {"cycle_s_median": memcpy_floor(walkers, args.repeats)}
        else:
            r = time_mapper(factories[name], walkers, args.workers, args.repeats)
        rows.append({"mapper": name, "atoms": n_atoms, "walkers": args.walkers, "workers": args.workers,
                     "bytes_per_cycle": nbytes, **r})
    for r in rows:  # ratios only between figures of this run
        floor = next(x for x in rows if x["atoms"] == r["atoms"] and x["mapper"] == "memcpy floor")
        r["x_floor"] = r["cycle_s_median"] / floor["cycle_s_median"]
        r["per_task_us"] = 1e6 * r["cycle_s_median"] / r["walkers"]
        r["per_task_over_floor_us"] = 1e6 * (r["cycle_s_median"] - floor["cycle_s_median"]) / r["walkers"]
        r["gb_per_s"] = 2 * r["bytes_per_cycle"] / r["cycle_s_median"] / 1e9
        wepy = next((x for x in rows if x["atoms"] == r["atoms"] and x["mapper"] == "wepy WorkerMapper"), None)
        r["speedup_vs_wepy"] = wepy["cycle_s_median"] / r["cycle_s_median"] if wepy else None
    print(f"\nNo-op segment, {args.walkers} walkers, {args.workers} workers, median of {args.repeats} cycles:\n")
    print(markdown_table(rows, [
        ("atoms", "atoms", ",d"), ("mapper", "mapper", "s"), ("cycle_s_median", "cycle s", ".4f"),
        ("x_floor", "× memcpy floor", ".2f"), ("speedup_vs_wepy", "× faster than wepy", ".1f"),
        ("per_task_us", "µs / task", ".0f"), ("per_task_over_floor_us", "µs / task over floor", ".0f"),
        ("gb_per_s", "GB/s (in+out)", ".2f"), ("manager_cpu_s_median", "manager CPU s", ".4f"),
    ]))
    path = write_json(args.out, {"benchmark": "transport", "args": vars(args), "machine": machine(), "rows": rows})
    print(f"\nraw figures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
