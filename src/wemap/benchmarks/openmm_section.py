"""Segment stage of real MD: wemap's `OpenMMRunner` against wepy's ``OpenMMRunner``.

Same TIP3P water box (`wemap.systems.water_box`), walkers, steps, platform and mapper for
both; cycles are driven by `wemap.sim.run` without resampling. wemap's runner builds one
``Context`` per worker and reuses it; wepy's builds a new one every segment. Reported per
runner: segment-stage wall time of the first cycle (it holds wemap's one-off Context builds)
and of the later ones, and the fraction of the later cycles' worker time spent inside
``integrator.step`` (summed step seconds / (segment-stage wall seconds × processes)).

wepy's runner gets the platform properties wemap's gives worker 0 (``Threads`` on CPU,
``DeviceIndex`` on a GPU platform), and reads back the same state (no forces, no parameters),
so what differs is the Context, not the data read. Its step time comes back on each walker
(`TimedWepySegment`), from the split times wepy's runner records in the worker.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["run_openmm_section", "TimedWepySegment", "availability", "check_platform"]

logger = logging.getLogger(__name__)


def availability() -> str | None:
    """None when the section can run, else why not."""
    try:
        import wemap.openmm
        import wemap.systems  # noqa: F401
    except ImportError as exc:
        return f"wemap.openmm not available ({exc})"
    return None


def check_platform(platform: str, required: bool = False) -> str | None:
    """Why the section cannot run on ``platform`` here (a note), or None; before any box is built.

    Raises ValueError for a name OpenMM does not know, and for any reason when ``required``
    (``--openmm-only``: nothing else would be measured).
    """
    why = availability()
    if why is None:
        from wemap.openmm.platforms import KNOWN_PLATFORMS, require_platform

        try:
            require_platform(platform)
        except ValueError as exc:
            if required or platform not in KNOWN_PLATFORMS:
                raise
            why = str(exc)
        else:
            return None
    elif required:
        raise ValueError(why)
    return why


class TimedWepySegment:
    """wepy's ``run_segment``, with that segment's split times carried back on the walker it returns.

    Each worker passes its own platform properties (its ``DeviceIndex`` on a GPU), as wepy's GPU
    workers do and as wemap's runner gets them, so both runners spread over the same devices.
    """

    def __init__(self, runner: Any, platform: str = "CPU", num_workers: int = 1,
                 devices: Sequence[int] | None = None) -> None:
        self.runner = runner
        self.platform = platform
        self.num_workers = num_workers
        self.devices = devices

    def __call__(self, walker: Any, segment_length: int, **kwargs: Any) -> Any:
        from wemap.openmm import platform_properties_for
        from wemap.worker import current_worker

        w = current_worker()
        props = platform_properties_for(self.platform, w.worker_idx if w else 0, self.num_workers, self.devices)
        out = self.runner.run_segment(walker, segment_length, platform_kwargs=props)
        out.segment_split_times = dict(self.runner._last_cycle_segments_split_times[-1])
        return out


def _wepy_runner_and_walkers(box: Any, platform: str, props: dict[str, str], first: Any, n_walkers: int):
    """wepy's runner and ``OpenMMWalker``s at the same positions, velocities and box as ``first``."""
    import openmm
    import wepy.runners.openmm as wepy_omm

    # wepy 1.2's OpenMMRunner.__init__ reads a module-level name it never defines
    # (get_parameter_derivs); define it so the constructor runs. Nothing else reads it.
    if not hasattr(wepy_omm, "get_parameter_derivs"):
        wepy_omm.get_parameter_derivs = False
    runner = wepy_omm.OpenMMRunner(
        box.system, box.topology, box.integrator(), platform=platform, platform_kwargs=props,
        get_state_kwargs={"getForces": False, "getParameters": False, "enforcePeriodicBox": False},
    )
    ctx = openmm.Context(box.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"),
                         {"Threads": "1"})
    ctx.setPeriodicBoxVectors(*(openmm.Vec3(*row) for row in first.state["box_vectors"]))
    ctx.setPositions(first.state["positions"])
    ctx.setVelocities(first.state["velocities"])
    state = ctx.getState(getPositions=True, getVelocities=True, getEnergy=True)
    del ctx
    walkers = [wepy_omm.OpenMMWalker(wepy_omm.OpenMMState(state), 1.0 / n_walkers) for _ in range(n_walkers)]
    return runner, walkers


def _make_mapper(name: str, workers: int) -> Any:
    import wemap

    return wemap.Mapper() if name == "Mapper" else getattr(wemap, name)(num_workers=workers)


def _drive(label: str, mapper_name: str, workers: int, processes: int, segment_func: Any, walkers: list,
           steps: int, cycles: int, step_seconds: Any) -> dict[str, Any]:
    from wemap import sim

    per_cycle_steps: list[float] = []

    def collect(stats: Any, out: list) -> None:
        per_cycle_steps.append(step_seconds(stats, out))

    t0 = time.perf_counter()
    result = sim.run(walkers, segment_func, _make_mapper(mapper_name, workers), cycles, steps,
                     reporters=[collect], show_progress=False, num_workers=workers)
    walls = [c.segment_wall_s for c in result.cycles]
    later, later_steps = (walls[1:], per_cycle_steps[1:]) if len(walls) > 1 else (walls, per_cycle_steps)
    row = {
        "runner": label,
        "mapper": mapper_name,
        "workers": workers,
        "processes": processes,
        "cycle_s": walls,
        "step_s": per_cycle_steps,
        "first_cycle_s": walls[0],
        "later_cycle_s_median": statistics.median(later),
        "later_cycle_s_min": min(later),
        "later_cycle_s_max": max(later),
        "later_cycle_s_sum": sum(later),
        "later_step_s_sum": sum(later_steps),
        "total_s": time.perf_counter() - t0,
    }
    row["step_fraction"] = row["later_step_s_sum"] / (row["later_cycle_s_sum"] * processes)
    return row


def run_openmm_section(
    platform: str = "CPU",
    atoms: int = 3000,
    walkers: int = 4,
    workers: int = 2,
    steps: int = 100,
    cycles: int = 4,
    mapper: str = "WorkerMapper",
    devices: list[int] | None = None,
) -> dict[str, Any]:
    """Both runners on one water box; ``{"status": "skipped", "reason": ...}`` when OpenMM or wemap.openmm
    is missing."""
    params = {"platform": platform, "atoms": atoms, "walkers": walkers, "workers": workers, "steps": steps,
              "cycles": cycles, "mapper": mapper, "devices": devices}
    why = availability()
    if why:
        return {"status": "skipped", "reason": why, "params": params, "rows": []}
    why = check_platform(platform)
    if why:
        return {"status": "unavailable", "reason": why, "params": params, "rows": []}
    from wemap.openmm import OpenMMRunner, platform_properties_for
    from wemap.systems import water_box

    t = time.perf_counter()
    box = water_box(atoms)
    build_s = time.perf_counter() - t
    n_workers = 1 if mapper == "Mapper" else workers
    processes = min(n_workers, walkers)
    rows = []

    runner = OpenMMRunner(box.system, box.integrator(), platform=platform, devices=devices)
    start = box.walkers(walkers, seed=1)
    rows.append(_drive(
        "wemap OpenMMRunner", mapper, n_workers, processes, runner.run_segment, start, steps, cycles,
        lambda stats, out: stats.segment_timings_sum[2] if stats.segment_timings_sum else float("nan"),
    ))
    runner.release()

    try:
        import wepy.runners.openmm  # noqa: F401
    except ImportError as exc:
        wepy_reason = f"wepy is not installed ({exc})"
    else:
        wepy_reason = None
        props = platform_properties_for(platform, 0, n_workers, devices=devices)
        wepy_runner, wepy_walkers = _wepy_runner_and_walkers(box, platform, props, start[0], walkers)
        rows.append(_drive(
            "wepy OpenMMRunner", mapper, n_workers, processes,
            TimedWepySegment(wepy_runner, platform, n_workers, devices), wepy_walkers, steps,
            cycles, lambda stats, out: sum(w.segment_split_times["steps_time"] for w in out),
        ))
    ref = next((r for r in rows if r["runner"] == "wepy OpenMMRunner"), None)
    for r in rows:
        r["wepy_later_cycle_s_median"] = ref["later_cycle_s_median"] if ref else None
        r["speedup_vs_wepy"] = ref["later_cycle_s_median"] / r["later_cycle_s_median"] if ref else None
    return {
        "status": "ok",
        "reason": None,
        "params": params,
        "system": {"name": box.name, "atoms": box.n_atoms, "box_nm": float(box.box_vectors[0, 0]),
                   "build_s": build_s},
        "wepy": wepy_reason or "measured",
        "rows": rows,
    }
