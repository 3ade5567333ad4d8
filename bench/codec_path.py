"""A walker's trip through the slot format in one process: the per-walker CPU of each side, no ring.

`bench/per_task.py` times whole cycles, which on a shared 2-vCPU VM move by a third from one
minute to the next with how the host schedules three processes; this times only the work a
change to the codec or the mapper's bookkeeping changes, in one process, with nothing to wait
for, and takes the least disturbed of several repeats. The phases are the ones a no-op cycle
runs per walker: the manager encodes the call and writes it into a slot; a worker reads it as
views, hands the walker back and writes a result descriptor that refers to the input (nothing
copied); the manager reads the result and copies it out, or, for a walker it wrote into an
input block of the result arena (walkers of 128 KiB or more), hands it out where it is.
Beside them, the bare copies of the same arrays (``np.copyto`` in, and out into existing
arrays), so what is left is overhead.

    python bench/codec_path.py --atoms 1000 10000
"""

from __future__ import annotations

import argparse
import sys
import timeit

import numpy as np

from wemap.benchmarks.report import report_rows
from wemap.benchmarks.workloads import make_walkers
from wemap.codec import IN_REGION, OUT_REGION, CodecRegistry, decode_call, encode_call, read_descriptor, write_call
from wemap.memcopy import BlockPool
from wemap.shm_worker import _region_ref


def phases(atoms: int, walkers: int) -> dict:
    """One callable per phase, each running every walker once (in a cycle's order)."""
    ws = make_walkers(walkers, atoms)
    manager, worker = CodecRegistry(), CodecRegistry()
    size = 2 * 48 * atoms + 2**16
    slots = [(np.zeros(size, np.uint8), np.zeros(size, np.uint8)) for _ in ws]
    refs = [_region_ref(s) for s in slots]
    pool, kept = BlockPool(), []

    def manager_in():
        for i, w in enumerate(ws):
            enc = encode_call(manager, (w, 0), {"cycle_idx": 3, "walker_idx": i}, where=f"walker {i}", region=IN_REGION)
            write_call(enc, slots[i][IN_REGION])

    def worker_side():
        for (inp, out), ref in zip(slots, refs):
            args, _ = decode_call(worker, read_descriptor(inp), (inp, out), copy=False, readonly=True)
            write_call(encode_call(worker, (args[0],), {}, where="result", region=OUT_REGION, local_ref=ref), out)

    keep = 2 * sum(a.nbytes for w in ws for a in w.state.values() if isinstance(a, np.ndarray))

    def manager_out():
        results = [decode_call(manager, read_descriptor(out), (inp, out), copy=True, readonly=True, pool=pool)[0][0]
                   for inp, out in slots]
        kept[:] = results  # held until the next cycle's, as a WE loop holds its walkers
        pool.trim(keep_bytes=keep)  # what the mapper does after each cycle

    def manager_out_owned():
        results = [decode_call(manager, read_descriptor(out), (inp, out), copy=True, readonly=True, pool=pool,
                               owned_input=True)[0][0] for inp, out in slots]
        kept[:] = results

    arrays = [[a for a in w.state.values() if isinstance(a, np.ndarray)] for w in ws]
    into = [[np.empty_like(a) for a in walker] for walker in arrays]
    back = [[np.empty_like(a) for a in walker] for walker in arrays]

    def copy_in():
        for src, dst in zip(arrays, into):
            for a, d in zip(src, dst):
                np.copyto(d, a)

    def copy_out():
        for src, dst in zip(into, back):
            for a, d in zip(src, dst):
                np.copyto(d, a)

    manager_in(), worker_side(), manager_out()  # layouts parsed, blocks made
    return {"manager: encode + write (copy in)": manager_in, "bare copy in": copy_in,
            "worker: read views, result descriptor": worker_side,
            "manager: read + decode (copy out)": manager_out, "bare copy out": copy_out,
            "manager: read + decode, walker in its input block (nothing copied)": manager_out_owned}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=int, nargs="+", default=[1_000, 10_000])
    ap.add_argument("--walkers", type=int, default=8)
    ap.add_argument("--number", type=int, default=200, help="cycles per repeat")
    ap.add_argument("--repeats", type=int, default=7, help="the least disturbed repeat is reported")
    ap.add_argument("--out", default="bench/results/codec_path.json")
    args = ap.parse_args(argv)
    rows = []
    for atoms in args.atoms:
        timed = {}
        for name, run in phases(atoms, args.walkers).items():
            best = min(timeit.repeat(run, number=args.number, repeat=args.repeats))
            timed[name] = 1e6 * best / args.number / args.walkers
        extra = {"manager: encode + write (copy in)": "bare copy in", "manager: read + decode (copy out)": "bare copy out"}
        for name, us in timed.items():
            over = us - timed[extra[name]] if name in extra else None
            rows.append({"atoms": atoms, "phase": name, "us_per_walker": us, "over_copy_us": over})
    title = f"{args.walkers} walkers, one process, least disturbed of {args.repeats} repeats of {args.number} cycles:"
    report_rows("codec_path", args, title, rows, [("atoms", "atoms", ",d"), ("phase", "phase", "s"),
                                                  ("us_per_walker", "µs / walker", ".2f"),
                                                  ("over_copy_us", "µs beyond the bare copy", ".2f")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
