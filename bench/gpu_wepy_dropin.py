"""A wepy GPU script with its imports switched to wemap, against the same script on wepy's own classes.

Both runs use wepy's ``Manager``, ``NoResampler`` and ``OpenMMGPUWorker`` on the same relaxed TIP3P
water box; only the mapper and the runner change:

- wepy's runner: ``wepy.runners.openmm.OpenMMRunner`` (a new ``Context`` every segment), through
  ``wemap.WorkerMapper`` (wepy's own ``WorkerMapper`` polls its queues and, here, stalled with
  ``OpenMMCPUWorker``; the mapper costs little beside a segment either way);
- wemap: ``wemap.SharedMemWorkerMapper`` + ``wemap.openmm.WepyOpenMMRunner`` (one ``Context`` per
  worker), constructed with wepy's arguments in wepy's order.

Prints one markdown table (cycle times from wepy's own ``cycle_runner_time``; the first cycle apart,
it builds the Contexts) and writes the figures as JSON::

    python bench/gpu_wepy_dropin.py --platform CUDA --atoms 100000 --devices 0,0
    python bench/gpu_wepy_dropin.py --platform CPU --worker cpu --atoms 900 --steps 20 --cycles 2   # a dry run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


class CycleTimes:
    """A wepy reporter that keeps each cycle's segment-stage wall time (wepy's ``cycle_runner_time``)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def init(self, **kwargs):
        pass

    def report(self, cycle_runner_time=None, **kwargs):
        self.times.append(float(cycle_runner_time))

    def cleanup(self, **kwargs):
        pass


def initial_walkers(box, n: int, platform_name: str = "CPU"):
    """wepy's OpenMMWalkers holding an ``openmm.State`` with velocities at the box's temperature."""
    import openmm
    from wepy.runners.openmm import OpenMMState, OpenMMWalker

    ctx = openmm.Context(box.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform_name))
    ctx.setPeriodicBoxVectors(*(openmm.Vec3(*row) for row in box.box_vectors))
    ctx.setPositions(box.positions)
    ctx.setVelocitiesToTemperature(box.temperature, 1)
    state = ctx.getState(getPositions=True, getVelocities=True, getEnergy=True, getForces=True)
    return [OpenMMWalker(OpenMMState(state), 1.0 / n) for _ in range(n)]


def run(label: str, mapper, runner, walkers, cycles: int, steps: int, workers: int) -> dict:
    from wepy.resampling.resamplers.resampler import NoResampler
    from wepy.sim_manager import Manager

    times = CycleTimes()
    sim = Manager(walkers, runner=runner, resampler=NoResampler(), work_mapper=mapper, reporters=[times])
    t0 = time.perf_counter()
    out, _ = sim.run_simulation(cycles, steps, num_workers=workers)
    total = time.perf_counter() - t0
    pos = np.asarray(out[0].state["positions"])
    later = times.times[1:]
    return {"label": label, "cycle_s": times.times, "first_cycle_s": times.times[0],
            "later_cycle_s_median": statistics.median(later) if later else float("nan"),
            "total_s": total, "finite": bool(np.isfinite(pos).all()), "walker_type": type(out[0]).__name__,
            "sim_state_type": type(out[0].state.sim_state).__name__}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--platform", default="CUDA")
    p.add_argument("--atoms", type=int, default=100_000)
    p.add_argument("--walkers", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--devices", default="0,0", help="DeviceIndex per worker (device_ids), e.g. 0,0")
    p.add_argument("--worker", choices=("gpu", "cpu"), default="gpu",
                   help="wepy's OpenMMGPUWorker (DeviceIndex per worker) or OpenMMCPUWorker (Threads)")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args(argv)

    import openmm
    from openmm import unit
    from wepy.runners.openmm import OpenMMCPUWorker, OpenMMGPUWorker
    from wepy.runners.openmm import OpenMMRunner as WepyRunner

    import wemap
    from wemap.openmm import WepyOpenMMRunner
    from wemap.systems import water_box

    try:
        openmm.Platform.getPlatformByName(args.platform)
    except Exception as exc:
        failures = " | ".join(" ".join(f.split()) for f in openmm.Platform.getPluginLoadFailures())
        print(f"no {args.platform} platform in OpenMM {openmm.Platform.getOpenMMVersion()}: {exc}; "
              f"plugin load failures: {failures or 'none'}", file=sys.stderr)
        return 2
    device_ids = [int(d) for d in args.devices.split(",")]
    worker_type = OpenMMGPUWorker if args.worker == "gpu" else OpenMMCPUWorker
    box = water_box(args.atoms)  # relaxed on the CPU platform: the manager never touches the GPU

    def integrator():
        return openmm.LangevinMiddleIntegrator(box.temperature * unit.kelvin, 1 / unit.picosecond,
                                               box.timestep_ps * unit.picoseconds)

    rows: list[dict] = []
    path = os.path.join(args.out, "gpu-wepy-dropin.json")
    os.makedirs(args.out, exist_ok=True)

    def save(row: dict) -> None:
        """Keep each run's figures as it ends: a later run that fails or is killed loses nothing."""
        rows.append(row)
        print(f"{row['label']}: cycles {', '.join(f'{t:.3f}' for t in row['cycle_s'])} s", flush=True)
        with open(path, "w") as f:
            json.dump({"args": vars(args), "openmm": openmm.Platform.getOpenMMVersion(), "atoms": box.n_atoms,
                       "rows": rows}, f, indent=2)

    # wemap: only the imports differ from the wepy run below (wepy's argument order, wepy's worker)
    runner = WepyOpenMMRunner(box.system, box.topology, integrator(), platform=args.platform)
    mapper = wemap.SharedMemWorkerMapper(args.workers, worker_type, None, runner.run_segment,
                                         device_ids=device_ids, platform=args.platform)
    save(run("wemap SharedMemWorkerMapper + WepyOpenMMRunner", mapper, runner,
                    initial_walkers(box, args.walkers), args.cycles, args.steps, args.workers))
    wepy_runner = WepyRunner.__new__(WepyRunner)
    try:
        wepy_runner.__init__(box.system, box.topology, integrator(), platform=args.platform)
    except NameError:  # wepy 1.2's own bug (docs/openmm.md): its module lacks get_parameter_derivs
        import wepy.runners.openmm as wro

        wro.get_parameter_derivs = False
        wepy_runner.__init__(box.system, box.topology, integrator(), platform=args.platform)
    wepy_mapper = wemap.WorkerMapper(args.workers, worker_type, None, wepy_runner.run_segment,
                                     device_ids=device_ids, platform=args.platform)
    save(run("wemap WorkerMapper + wepy's OpenMMRunner", wepy_mapper, wepy_runner,
                    initial_walkers(box, args.walkers), args.cycles, args.steps, args.workers))
    ref = rows[-1]["later_cycle_s_median"]
    print(f"## wepy script, imports switched: {box.n_atoms:,} atoms, {args.walkers} walkers, {args.workers} workers "
          f"(device_ids {device_ids}), {args.cycles} cycles x {args.steps} steps on {args.platform}\n")
    print("| run | first cycle s | later cycles s, median (min–max) | x wepy (later cycles) | walkers returned "
          "| finite |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        speed = ref / r["later_cycle_s_median"] if r["later_cycle_s_median"] else float("nan")
        later = r["cycle_s"][1:] or [float("nan")]
        print(f"| {r['label']} | {r['first_cycle_s']:.3g} | {r['later_cycle_s_median']:.3g} "
              f"({min(later):.3g}–{max(later):.3g}) | {speed:.3g} | {r['walker_type']}({r['sim_state_type']}) "
              f"| {r['finite']} |")
    return 0 if all(r["finite"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
