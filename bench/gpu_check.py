"""wemap's GPU path end to end, printed as one table (bench/gpu_check.sh installs and calls this).

    python3 bench/gpu_check.py [--platform CUDA] [--quick] [--out DIR] [--steps FILE] [--deadline EPOCH]

1. platform: OpenMM's version and platforms, the one asked for (or, missing, OpenMM's
   ``Platform.getPluginLoadFailures()``), the GPU as nvidia-smi names it, and what wemap's own
   checks say (``require_platform``, ``visible_devices``);
2. contexts: a few cycles through ``SharedMemWorkerMapper`` and ``WorkerMapper``, 2 workers,
   ``devices=[0, 0]``: each worker's Context reports the expected ``DeviceIndex`` (``Threads`` on
   CPU), is built once per worker (``segment_timings``' build time is 0 after a worker's first
   segment), and a second runner on the same mapper replaces the first one's Context (one live
   Context per worker);
3. bench: ``wemap bench --openmm-only`` on a 100,000-atom water box, wemap's runner against
   wepy's: the share of segment-stage time spent inside ``integrator.step``, per runner;
4. defaults: the Precision, UseBlockingSync and device a default Context gets on the platform.

``--platform CPU`` (or Reference) runs the same checks on the CPU at small sizes (what the tests
run). The results go to DIR/gpu_check.json after each check, so a later failure or a timeout
loses nothing: ``--report`` prints the table from that file. The exit code is 0 when every
check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GPU = ("CUDA", "OpenCL", "HIP")


# -- results -----------------------------------------------------------------------------------------
class Results:
    """Rows of (section, item, status, detail, seconds), saved to JSON as each one is added."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self.rows: list[dict[str, Any]] = []

    def add(self, section: str, item: str, status: str, detail: str = "", seconds: float | None = None,
            **data: Any) -> None:
        self.rows.append({"section": section, "item": item, "status": status, "detail": detail,
                          "seconds": seconds, **({"data": data} if data else {})})
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"header": self.header, "rows": self.rows}, indent=2, default=str))
        tmp.replace(self.path)

    @classmethod
    def load(cls, path: Path) -> Results:
        data = json.loads(path.read_text())
        out = cls(path, data["header"])
        out.rows = data["rows"]
        return out

    @property
    def failed(self) -> bool:
        return any(r["status"] == "FAIL" for r in self.rows)

    def table(self, steps: list[dict[str, Any]] | None = None) -> str:
        """The one table: the shell script's steps first, then every check."""
        rows = [{"section": "step", "item": s["name"], "status": "ok" if s["rc"] == 0 else
                 ("TIMEOUT" if s["rc"] in (124, 137) else f"rc {s['rc']}"), "detail": s.get("detail", ""),
                 "seconds": s["seconds"]} for s in (steps or [])] + self.rows
        cells = [[r["section"], r["item"], r["status"], "" if r["seconds"] is None else f"{r['seconds']:.1f}",
                  r["detail"]] for r in rows]
        head = ["section", "check", "status", "s", "detail"]
        widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(head[:4])]
        line = lambda c: "  ".join(x.ljust(w) for x, w in zip(c[:4], widths)) + "  " + c[4]  # noqa: E731
        h = self.header
        title = (f"wemap GPU check: platform {h.get('platform')}, {h.get('host')}, {h.get('date')}, "
                 f"Python {h.get('python')}")
        return "\n".join([title, line(head), line(["-" * w for w in widths] + ["-" * 6])] + [line(c) for c in cells])


def read_steps(path: str | None) -> list[dict[str, Any]]:
    """The shell script's steps: ``name<TAB>rc<TAB>seconds<TAB>detail`` per line."""
    if not path or not os.path.exists(path):
        return []
    out = []
    for raw in Path(path).read_text().splitlines():
        parts = raw.split("\t")
        if len(parts) >= 3:
            out.append({"name": parts[0], "rc": int(parts[1]), "seconds": float(parts[2]),
                        "detail": parts[3] if len(parts) > 3 else ""})
    return out


def _left(deadline: float | None, want: float) -> float:
    """Seconds a check may take: ``want``, or less so that the table still prints before ``deadline``."""
    return want if deadline is None else max(5.0, min(want, deadline - time.time() - 15))


# -- 1. platform -------------------------------------------------------------------------------------
def nvidia_smi() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,driver_version,compute_mode,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi not usable: {exc}"
    return (out.stdout.strip() or out.stderr.strip()).replace("\n", " | ") or None


def check_platform(res: Results, platform: str) -> bool:
    t = time.perf_counter()
    try:
        import openmm
    except Exception as exc:
        res.add("platform", "import openmm", "FAIL", f"{type(exc).__name__}: {exc}", time.perf_counter() - t)
        return False
    here = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    res.add("platform", "OpenMM", "info",
            f"{openmm.Platform.getOpenMMVersion()} at {os.path.dirname(openmm.__file__)}; "
            f"platforms {', '.join(here)}", time.perf_counter() - t)
    failures = [" ".join(f.split()) for f in openmm.Platform.getPluginLoadFailures()]
    try:
        found = openmm.Platform.getPlatformByName(platform)
    except Exception as exc:
        res.add("platform", f"{platform} platform", "FAIL",
                f"{exc}; plugin load failures: {' | '.join(failures) or 'none'}", failures=failures)
        ok = False
    else:
        res.add("platform", f"{platform} platform", "ok", f"found, speed {found.getSpeed():g}; properties "
                f"{', '.join(found.getPropertyNames())}", failures=failures)
        ok = True
    if platform in GPU:
        smi = nvidia_smi()
        res.add("platform", "GPU (nvidia-smi)", "info", smi or "nvidia-smi printed nothing")
        res.add("platform", "CUDA_VISIBLE_DEVICES", "info", repr(os.environ.get("CUDA_VISIBLE_DEVICES")))
    try:
        from wemap.openmm.gpus import visible_devices
        from wemap.openmm.platforms import require_platform
    except Exception as exc:
        res.add("platform", "import wemap.openmm", "FAIL", f"{type(exc).__name__}: {exc}")
        return False
    try:
        require_platform(platform)
    except Exception as exc:
        res.add("platform", "wemap require_platform", "FAIL" if ok else "ok",
                f"{'refused a platform OpenMM has' if ok else 'refused at once, as it should'}: {exc}")
    else:
        res.add("platform", "wemap require_platform", "ok" if ok else "FAIL", "passed")
    if platform in ("CUDA", "HIP"):
        try:
            res.add("platform", "wemap visible_devices", "ok", str(visible_devices(platform=platform)))
        except Exception as exc:
            res.add("platform", "wemap visible_devices", "FAIL", f"{type(exc).__name__}: {exc}")
    return ok


# -- 2. one Context per worker, on the right device ----------------------------------------------------
class Probe:
    """Segment function: runner ``which`` runs the segment; the walker comes back with what its
    worker's Context says, as ``state["probe"]`` = [pid, worker index, property value, live
    Contexts of both runners in this worker, segments on this Context]."""

    def __init__(self, runners: list[Any], prop: str) -> None:
        self.runners = runners
        self.prop = prop

    def __call__(self, walker: Any, segment_length: int, which: int = 0, **kwargs: Any) -> Any:
        import numpy as np

        runner = self.runners[which]
        out = runner.run_segment(walker, segment_length)
        (live,) = runner.live_contexts()
        ctx = live.context
        try:
            value = float(ctx.getPlatform().getPropertyValue(ctx, self.prop))
        except Exception:  # a property this platform does not have, or a multi-device "0,1"
            value = -1.0
        alive = sum(len(r.live_contexts()) for r in self.runners)
        out.state["probe"] = np.array([os.getpid(), live.worker_idx, value, alive, live.segments], dtype=np.float64)
        return out


def check_contexts(res: Results, platform: str, mapper_name: str, quick: bool, deadline: float | None) -> None:
    import wemap
    from wemap.openmm import OpenMMRunner, platform_properties_for
    from wemap.systems import alanine_dipeptide

    t0 = time.perf_counter()
    section = f"contexts {mapper_name}"
    workers, devices = 2, [0, 0]
    gpu = platform in GPU
    prop = "DeviceIndex" if gpu else "Threads"
    expected = [platform_properties_for(platform, i, workers, devices if gpu else None).get(prop)
                for i in range(workers)]
    system = alanine_dipeptide()
    runners = [OpenMMRunner(system.system, system.integrator(seed=s), platform=platform,
                            devices=devices if gpu else None) for s in (11, 12)]
    walkers = system.walkers(4, seed=1)
    steps = 20 if quick else 200
    limit = _left(deadline, 180)
    cycles: list[list[Any]] = []
    cls = getattr(wemap, mapper_name)
    with cls(num_workers=workers, segment_func=Probe(runners, prop), max_retries=0, first_task_timeout=limit,
             task_timeout=limit) as mapper:
        for which in (0, 0, 0, 1):  # three cycles of the first runner, then the second on the same workers
            walkers = mapper.map(walkers, [steps] * len(walkers), which=[which] * len(walkers))
            cycles.append([(w.state["probe"].copy(), float(w.state["segment_timings"][0]),
                            float(w.state["segment_timings"][2])) for w in walkers])
    seconds = time.perf_counter() - t0

    first = [p for c in cycles[:3] for p in c]
    pids = {int(p[0][0]) for p in first}
    builds = {pid: sum(1 for p in first if int(p[0][0]) == pid and p[1] > 0) for pid in pids}
    res.add(section, "one build per worker", "ok" if all(b == 1 for b in builds.values()) else "FAIL",
            f"{len(pids)} worker process(es) ran; Context builds per worker over 3 cycles: "
            f"{sorted(builds.values())} (want 1 each)", seconds, builds=list(builds.values()))
    got = sorted({(int(p[0][1]), p[0][2]) for p in first})
    want = [None if e is None else float(e) for e in expected]  # None: OpenMM chose, nothing to compare
    want_ok = all(want[idx] is None or value == want[idx] for idx, value in got)
    res.add(section, f"{prop} per worker", "ok" if want_ok else "FAIL",
            ", ".join(f"worker {i}: {v:g}" for i, v in got) + f" (expected {expected})")
    build_s = [p[1] for p in first if p[1] > 0]
    step_s = [p[2] for c in cycles[1:3] for p in c]
    res.add(section, "Context build / segment", "info",
            f"build {max(build_s):.3f} s (slowest worker); later segments' integrator.step median "
            f"{statistics.median(step_s) * 1e3:.1f} ms for {steps} steps" if build_s and step_s else "no timings")
    second = cycles[3]
    alive = sorted({int(p[0][3]) for p in second})
    rebuilt = {int(p[0][0]) for p in second if p[1] > 0}
    ran = {int(p[0][0]) for p in second}
    res.add(section, "second runner replaces the first", "ok" if alive == [1] and rebuilt == ran else "FAIL",
            f"live Contexts per worker after the second runner ran: {alive} (want [1]); "
            f"{len(rebuilt)} of {len(ran)} worker(s) built the second runner's")


# -- 3. wemap's runner vs wepy's, in integrator.step ---------------------------------------------------
def check_bench(res: Results, python: str, platform: str, quick: bool, out: Path, deadline: float | None,
                atoms: int | None) -> None:
    atoms = atoms or (300 if quick else 100_000)
    cycles, steps = (2, 10) if quick else (3, 500)
    name = "gpu-check-bench"
    cmd = [python, "-m", "wemap", "bench", "--openmm-only", "--platform", platform, "--openmm-atoms", str(atoms),
           "--openmm-walkers", "4", "--openmm-workers", "2", "--openmm-cycles", str(cycles),
           "--openmm-steps", str(steps), "--openmm-mapper", "WorkerMapper", "--out", str(out), "--name", name,
           "--no-plot", "--no-progress"]
    if platform in GPU:
        cmd += ["--openmm-devices", "0,0"]
    limit = _left(deadline, 330)
    t0 = time.perf_counter()
    log = out / "bench.log"
    try:
        with open(log, "w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=limit)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = None
    seconds = time.perf_counter() - t0
    command = f"--platform {platform} --openmm-atoms {atoms}, {cycles} cycles x {steps} steps"
    path = out / f"{name}.json"
    if rc != 0 or not path.exists():
        tail = " | ".join(log.read_text().strip().splitlines()[-3:]) if log.exists() else ""
        res.add("bench", "wemap bench --openmm-only", "FAIL", f"{command}: "
                + (f"timed out after {limit:.0f} s" if rc is None else f"exit {rc}") + f"; {tail}", seconds)
        return
    section = json.loads(path.read_text()).get("openmm") or {}
    if section.get("status") != "ok":
        res.add("bench", "wemap bench --openmm-only", "FAIL",
                f"{command}: OpenMM section {section.get('status')}: {section.get('reason')}", seconds)
        return
    system = section["system"]
    res.add("bench", "wemap bench --openmm-only", "ok", f"{command}: {system['atoms']:,} atoms, box built in "
            f"{system['build_s']:.1f} s; 4 walkers, 2 workers on {platform}", seconds)
    for row in section["rows"]:
        speed = row.get("speedup_vs_wepy")
        res.add("bench", row["runner"], "ok",
                f"in integrator.step {100 * row['step_fraction']:.1f}% of later cycles' worker time; "
                f"cycle 0 {row['first_cycle_s']:.2f} s, later cycles median {row['later_cycle_s_median']:.2f} s"
                + (f"; {speed:.2f}x wepy's speed" if speed else ""),
                step_fraction=row["step_fraction"], first_cycle_s=row["first_cycle_s"],
                later_cycle_s_median=row["later_cycle_s_median"], speedup_vs_wepy=speed)


# -- 4. what a default Context gets ------------------------------------------------------------------
def check_defaults(res: Results, platform: str) -> None:
    import openmm

    t0 = time.perf_counter()
    system = openmm.System()
    system.addParticle(1.0)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    names = ("DeviceIndex", "DeviceName", "Precision", "UseBlockingSync", "Threads")
    got = {n: ctx.getPlatform().getPropertyValue(ctx, n) for n in names if n in ctx.getPlatform().getPropertyNames()}
    del ctx
    res.add("defaults", f"a default {platform} Context", "info", ", ".join(f"{k}={v}" for k, v in got.items()),
            time.perf_counter() - t0, **got)


# -- main --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--platform", default="CUDA", help="OpenMM platform to check (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="small sizes (the CPU dry run the tests use)")
    p.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder for the JSON and logs")
    p.add_argument("--steps", default=None, help="the shell script's step log to show in the table")
    p.add_argument("--deadline", type=float, default=None, help="epoch seconds by which the table must print")
    p.add_argument("--atoms", type=int, default=None, help="water box atoms of the bench (default 100000; 300 --quick)")
    p.add_argument("--mappers", nargs="+", default=["SharedMemWorkerMapper", "WorkerMapper"])
    p.add_argument("--report", action="store_true", help="only print the table of an earlier run from --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = args.out / "gpu_check.json"
    steps = read_steps(args.steps)
    header = {"platform": args.platform, "host": _platform.node(), "python": _platform.python_version(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick}
    if args.report:
        res = Results.load(path) if path.exists() else Results(path, header)
        print(res.table(steps))
        return 1 if res.failed or _steps_failed(steps) else 0
    res = Results(path, header)
    res.save()
    try:
        if check_platform(res, args.platform):
            for name in args.mappers:
                try:
                    check_contexts(res, args.platform, name, args.quick, args.deadline)
                except Exception as exc:
                    res.add(f"contexts {name}", "ran", "FAIL", f"{type(exc).__name__}: {' '.join(str(exc).split())}")
            check_bench(res, sys.executable, args.platform, args.quick, args.out, args.deadline, args.atoms)
            check_defaults(res, args.platform)
        else:
            res.add("contexts", "-", "skip", f"no {args.platform} platform")
            res.add("bench", "-", "skip", f"no {args.platform} platform")
    except Exception as exc:  # the table prints whatever happened
        res.add("gpu_check", "crashed", "FAIL", f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    finally:
        print(res.table(steps), flush=True)
    return 1 if res.failed or _steps_failed(steps) else 0


def _steps_failed(steps: list[dict[str, Any]]) -> bool:
    return any(s["rc"] and not s["detail"].startswith("tolerated") for s in steps)


if __name__ == "__main__":
    sys.exit(main())
