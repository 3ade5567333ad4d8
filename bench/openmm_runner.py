"""Segment stage per cycle: wemap's OpenMMRunner (one Context per worker, reused) vs wepy's
OpenMMRunner (a new Context every segment), same water box, walkers, steps, platform and mapper.

Also reports the fraction of the segment stage spent inside ``integrator.step`` (summed step
time over segment-stage wall time x workers): what is left is Context creation, setting and
reading states, idle workers and the mapper. The first cycle includes
wemap's one-off Context builds, so it is reported apart from the later cycles.

    python bench/openmm_runner.py                                  # CPU, 3000-atom box
    python bench/openmm_runner.py --platform CUDA --atoms 100000 --walkers 8 --steps 500
    python bench/openmm_runner.py --worker-mapper --workers 2      # also through WorkerMapper
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, write_json  # noqa: E402

import openmm  # noqa: E402

import wemap  # noqa: E402
from wemap import sim  # noqa: E402
from wemap.openmm import OpenMMRunner, platform_properties_for  # noqa: E402
from wemap.systems import water_box  # noqa: E402


def wepy_runner_and_walkers(box, integrator, platform: str, props: dict, n_walkers: int):
    """wepy's OpenMMRunner and OpenMMWalkers for ``box``; None when wepy is not installed."""
    try:
        import wepy.runners.openmm as wepy_omm
    except ImportError:
        print("wepy not installed: its OpenMMRunner is left out", file=sys.stderr)
        return None
    # wepy 1.2's OpenMMRunner.__init__ assigns an undefined name (get_parameter_derivs): give the
    # module that name so the constructor runs; nothing else reads it.
    if not hasattr(wepy_omm, "get_parameter_derivs"):
        wepy_omm.get_parameter_derivs = False
    # Same state requests as wemap's runner (no forces, no parameters, no box wrapping), so the
    # difference measured is the Context, not the amount of data read back.
    runner = wepy_omm.OpenMMRunner(
        box.system, box.topology, integrator, platform=platform, platform_kwargs=props,
        get_state_kwargs={"getForces": False, "getParameters": False, "enforcePeriodicBox": False},
    )
    ctx = openmm.Context(box.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPeriodicBoxVectors(*(openmm.Vec3(*row) for row in box.box_vectors))
    ctx.setPositions(box.positions)
    ctx.setVelocitiesToTemperature(box.temperature, 1)
    state = ctx.getState(getPositions=True, getVelocities=True, getEnergy=True)
    walkers = [wepy_omm.OpenMMWalker(wepy_omm.OpenMMState(state), 1.0 / n_walkers) for _ in range(n_walkers)]
    return runner, walkers


def run_cycles(label: str, mapper_name: str, mapper, n_workers: int, segment_func, walkers, args,
               split_times=None) -> dict:
    """Drive ``args.cycles`` cycles (no resampling) and summarise the segment stage."""
    t0 = time.perf_counter()
    result = sim.run(walkers, segment_func, mapper, args.cycles, args.steps, show_progress=False)
    total = time.perf_counter() - t0
    walls = [c.segment_wall_s for c in result.cycles]
    later = walls[1:] or walls
    row = {
        "runner": label,
        "mapper": mapper_name,
        "workers": n_workers,
        "first_cycle_s": walls[0],
        "later_cycle_mean_s": statistics.fmean(later),
        "later_cycle_stdev_s": statistics.stdev(later) if len(later) > 1 else 0.0,
        "per_segment_s": statistics.fmean(later) / args.walkers,
        "overhead_mean_s": statistics.fmean(c.mapper_overhead_s for c in result.cycles),
        "total_s": total,
        "cycle_walls_s": walls,
    }
    seg = sum(walls) * n_workers  # worker-seconds the segment stage held
    if result.cycles[0].segment_timings_sum is not None:  # wemap's runner
        sums = [sum(c.segment_timings_sum[i] for c in result.cycles) for i in range(4)]
        later_steps = sum(c.segment_timings_sum[2] for c in result.cycles[1:])
        row.update(
            step_fraction=sums[2] / seg,
            step_fraction_later=later_steps / (sum(walls[1:]) * n_workers) if len(walls) > 1 else None,
            context_build_s=sums[0],
            set_state_s=sums[1],
            get_state_s=sums[3],
        )
    elif split_times is not None and split_times:  # wepy's runner, in this process
        row.update(
            step_fraction=sum(s["steps_time"] for s in split_times) / seg,
            context_build_s=sum(s["gen_sim_time"] for s in split_times),
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=int, default=3000, help="water box size in atoms (TIP3P, PME)")
    ap.add_argument("--walkers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100, help="2 fs steps per segment")
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("--platform", default="CPU", help="CPU (default), CUDA, OpenCL, HIP, Reference")
    ap.add_argument("--devices", default=None, help="GPU DeviceIndex list for WorkerMapper workers, e.g. 0,1")
    ap.add_argument("--worker-mapper", action="store_true", help="also run both runners through WorkerMapper")
    ap.add_argument("--workers", type=int, default=2, help="workers for --worker-mapper")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/openmm_runner_<platform>.json)")
    args = ap.parse_args()
    out = args.out or f"bench/results/openmm_runner_{args.platform.lower()}.json"
    devices = None if args.devices is None else [int(d) for d in args.devices.split(",")]

    t = time.perf_counter()
    box = water_box(args.atoms)
    print(f"{box.name}: built in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    rows = []
    plans = [("Mapper", 1)] + ([("WorkerMapper", args.workers)] if args.worker_mapper else [])
    for mapper_name, n in plans:
        props = platform_properties_for(args.platform, 0, n, devices=devices)
        make = (lambda: wemap.Mapper()) if mapper_name == "Mapper" else (lambda: wemap.WorkerMapper(num_workers=n))

        runner = OpenMMRunner(box.system, box.integrator(), platform=args.platform, devices=devices)
        walkers = box.walkers(args.walkers, seed=1)
        rows.append(run_cycles("wemap OpenMMRunner", mapper_name, make(), n, runner.run_segment, walkers, args))
        runner.release()
        print(f"done: wemap runner, {mapper_name}", file=sys.stderr)

        wepy = wepy_runner_and_walkers(box, box.integrator(), args.platform, props, args.walkers)
        if wepy is not None:
            wepy_runner, wepy_walkers = wepy
            split = wepy_runner._last_cycle_segments_split_times if mapper_name == "Mapper" else None
            rows.append(run_cycles("wepy OpenMMRunner", mapper_name, make(), n, wepy_runner.run_segment,
                                   wepy_walkers, args, split))
            print(f"done: wepy runner, {mapper_name}", file=sys.stderr)

    for row in rows:
        ref = next((r for r in rows if r["runner"] == "wepy OpenMMRunner" and r["mapper"] == row["mapper"]), None)
        row["speedup_vs_wepy"] = ref["later_cycle_mean_s"] / row["later_cycle_mean_s"] if ref else None
        row["step_pct"] = None if row.get("step_fraction") is None else 100 * row["step_fraction"]
    print(f"\n{box.name}, {args.walkers} walkers x {args.steps} steps, {args.cycles} cycles, OpenMM {args.platform}\n")
    print(markdown_table(rows, [
        ("runner", "runner", "s"), ("mapper", "mapper", "s"), ("workers", "workers", "d"),
        ("first_cycle_s", "cycle 0 s", ".3f"), ("later_cycle_mean_s", "later cycles mean s", ".3f"),
        ("per_segment_s", "per segment s", ".4f"), ("context_build_s", "Context builds s (all)", ".3f"),
        ("step_pct", "in integrator.step %", ".1f"), ("speedup_vs_wepy", "speed-up vs wepy", ".2f"),
    ]))
    path = write_json(out, {
        "benchmark": "openmm_runner",
        "args": vars(args),
        "system": {"name": box.name, "atoms": box.n_atoms, "box_nm": float(box.box_vectors[0, 0])},
        "machine": machine(),
        "rows": rows,
    })
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
