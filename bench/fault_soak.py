"""Fault soak: WE-style cycles while workers are killed or frozen, and managers signalled in ``init``.

Three kinds of fault, each counted per process mapper:

- **kill**: ``--cycles`` cycles of ``--walkers`` walkers with a deterministic segment (a
  displacement plus a short sleep, so faults land mid-segment), while a thread sends SIGKILL to a
  random live worker every ``--kill-every`` seconds;
- **freeze**: the same cycles while the thread sends SIGSTOP instead, every ``--freeze-every``
  seconds, and never SIGCONT: a frozen worker (a cgroup freeze, a process stuck in the kernel)
  neither runs nor dies, so the mapper's ``--task-timeout`` must notice it, kill it and run its
  walker elsewhere, whether it was frozen mid-segment or idle;
- **SIGINT / SIGTERM / SIGKILL in init**: ``--init-signals`` fresh managers per signal (this
  script, as a child), each sent the signal at a random moment of its first ``init`` (the forkserver,
  the resource tracker and the workers all starting), drawn over about an ``init``'s length.
  Its exit is timed until the manager and every process holding its output (its workers, the
  forkserver, the resource tracker) are gone.

The walkers that come back are compared with a fault-free run of the reference `Mapper`. After
each run it counts processes left behind (tagged through their environment, so workers reparented
after their manager died count too) and segments left in ``/dev/shm``; for the init signals, also
managers that did not exit within ``--exit-bound`` seconds (hangs) and the slowest exit.

    python bench/fault_soak.py --cycles 30 --walkers 8 --workers 2 --kill-every 0.3 --freeze-every 2.0 \\
        --init-signals 100
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import psutil

import wemap
from wemap.benchmarks.report import report_rows
from wemap.pool import multiprocessing_helper_pids

#: environment variable that tags every process a soak run starts (its workers inherit it)
TAG = "WEMAP_FAULT_SOAK_TAG"
INIT_SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}


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


def worker_pids() -> list[int]:
    """The running mapper's worker processes: every live process this one started (through the
    forkserver or directly) but multiprocessing's own helpers."""
    helpers = multiprocessing_helper_pids()
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid not in helpers and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def tagged(tag: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``tag`` (stopped ones included), wherever reparented."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(TAG) == tag and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, OSError):
            pass
    return out


def segments_of(pid: int) -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"wemap_{pid}_")}


def soak(name: str, factory, walkers, cycles: int, fault: str, every: float, seed: int) -> dict:
    """Run ``cycles`` cycles while a thread sends a random worker SIGKILL (``fault="kill"``) or
    SIGSTOP (``"freeze"``) every ``every`` seconds."""
    sig = signal.SIGKILL if fault == "kill" else signal.SIGSTOP
    before_shm = segments_of(os.getpid())
    me = psutil.Process()
    rng = random.Random(seed)
    mapper = factory()
    mapper.init(segment_func=segment)
    sent: list[int] = []
    stop = threading.Event()

    def injector():
        while not stop.wait(every):
            pids = [p for p in worker_pids() if p not in sent]  # a frozen one stays frozen
            if pids:
                pid = rng.choice(pids)
                try:
                    os.kill(pid, sig)
                    sent.append(pid)
                except ProcessLookupError:
                    pass

    t = threading.Thread(target=injector, daemon=True)
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
    helpers = multiprocessing_helper_pids()
    deadline = time.monotonic() + 5.0  # cleanup reaps its workers; anything else gets a moment to go
    while True:
        orphans = [p for p in me.children(recursive=True)
                   if p.pid not in helpers and p.status() != psutil.STATUS_ZOMBIE]
        if not orphans or time.monotonic() > deadline:
            break
        psutil.wait_procs(orphans, timeout=0.2)
    for p in orphans:
        p.kill()
    leaked = sorted(segments_of(os.getpid()) - before_shm)
    return {"mapper": name, "fault": fault, "faults_injected": len(sent), "recovered_segments": recovered,
            "error": error, "out": out, "orphans": len(orphans), "leaked_segments": len(leaked), "wall_s": wall}


def init_child(mapper_name: str, workers: int) -> int:
    """A manager for `signal_in_init`: says ``go`` just before ``init`` and ``ready`` after, then
    waits for a line on stdin and cleans up."""
    mapper = getattr(wemap, mapper_name)(segment_func=segment, num_workers=workers)
    print("go", flush=True)
    mapper.init()
    print("ready", flush=True)
    sys.stdin.readline()
    mapper.cleanup()
    return 0


def signal_in_init(mapper_name: str, workers: int, signum: int, delay: float, exit_bound: float) -> dict:
    """Start a fresh manager, send it ``signum`` ``delay`` seconds after it says it calls ``init``;
    how it ended and what it left."""
    tag = uuid.uuid4().hex
    env = {**os.environ, TAG: tag}
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--init-child", mapper_name, str(workers)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True, start_new_session=True)
    hung = False
    try:
        if proc.stdout.readline() != "go\n":
            raise RuntimeError(f"the manager did not start: {proc.communicate(timeout=30)[1][-2000:]}")
        time.sleep(delay)  # the random moment the signal lands
        proc.send_signal(signum)
        t0 = time.monotonic()
        try:
            out, err = proc.communicate("\n", timeout=exit_bound)
        except subprocess.TimeoutExpired:
            hung, out, err = True, "", ""
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    deadline = time.monotonic() + 5.0  # workers of a SIGKILLed manager leave by their lifeline
    left = tagged(tag)
    while left and time.monotonic() < deadline:
        psutil.wait_procs(left, timeout=0.2)
        left = tagged(tag)
    for p in left:
        p.kill()
    leaked = segments_of(proc.pid)
    for n in leaked:
        os.unlink(f"/dev/shm/{n}")
    return {"in_init": "ready" not in out, "hung": hung, "took": took, "orphans": len(left),
            "leaked": len(leaked), "stderr": err if hung or left or leaked else ""}


def init_signals(name: str, signame: str, tries: int, exit_bound: float, seed: int) -> dict:
    rng = random.Random(seed)
    span = 1.0  # seconds over which the signal is drawn, kept at about one init as tries land
    results = []
    t0 = time.perf_counter()
    for _ in range(tries):
        r = signal_in_init(name, rng.choice([1, 2, 3]), INIT_SIGNALS[signame], rng.uniform(0.0, span), exit_bound)
        results.append(r)
        span *= 1.1 if r["in_init"] else 0.85
        if r["stderr"]:
            print(f"{name} {signame}: hung={r['hung']} orphans={r['orphans']} leaked={r['leaked']}\n"
                  f"{r['stderr'][-4000:]}", file=sys.stderr)
    return {"mapper": name, "fault": f"{signame} in init", "faults_injected": tries,
            "in_init": sum(r["in_init"] for r in results), "hangs": sum(r["hung"] for r in results),
            "orphans": sum(r["orphans"] for r in results), "leaked_segments": sum(r["leaked"] for r in results),
            "slowest_exit_s": max((r["took"] for r in results if not r["hung"]), default=None),
            "wall_s": time.perf_counter() - t0, "error": None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--walkers", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--atoms", type=int, default=10_000)
    ap.add_argument("--kill-every", type=float, default=0.3, help="seconds between SIGKILLs (0: no kill run)")
    ap.add_argument("--freeze-every", type=float, default=2.0, help="seconds between SIGSTOPs (0: no freeze run)")
    ap.add_argument("--task-timeout", type=float, default=1.0,
                    help="the mappers' task_timeout in the freeze run (first segments get 10 times it)")
    ap.add_argument("--init-signals", type=int, default=20,
                    help="managers signalled during init, per mapper and signal (0: none)")
    ap.add_argument("--init-signal-kinds", default="SIGINT,SIGTERM,SIGKILL",
                    help=f"comma-separated, from {', '.join(INIT_SIGNALS)}")
    ap.add_argument("--exit-bound", type=float, default=30.0,
                    help="seconds a signalled manager may take to exit before it counts as a hang")
    ap.add_argument("--start-timeout", type=float, default=5.0,
                    help="the mappers' start_timeout: how long a replacement frozen while starting holds a map up")
    ap.add_argument("--max-retries", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/fault_soak.json")
    ap.add_argument("--init-child", nargs=2, metavar=("MAPPER", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.init_child:
        return init_child(args.init_child[0], int(args.init_child[1]))
    kinds = [k.strip() for k in args.init_signal_kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in INIT_SIGNALS]
    if unknown:
        ap.error(f"--init-signal-kinds: unknown {unknown}; choose from {list(INIT_SIGNALS)}")

    walkers = initial(args.walkers, args.atoms)
    with wemap.Mapper(segment_func=segment) as ref_mapper:
        reference = run(ref_mapper, walkers, args.cycles)
    mappers = {"WorkerMapper": wemap.WorkerMapper, "SharedMemWorkerMapper": wemap.SharedMemWorkerMapper}
    runs = [("kill", args.kill_every, {}), ("freeze", args.freeze_every, {"task_timeout": args.task_timeout})]
    rows = []
    for name, cls in mappers.items():
        for fault, every, extra in runs:
            if every <= 0:
                continue

            def factory(cls=cls, extra=extra):
                return cls(num_workers=args.workers, max_retries=args.max_retries,
                           start_timeout=args.start_timeout, **extra)

            r = soak(name, factory, walkers, args.cycles, fault, every, args.seed)
            out = r.pop("out")
            r["walkers_lost"] = args.walkers if out is None else sum(a != b for a, b in zip(out, reference))
            rows.append(r)
        for k, signame in enumerate(kinds if args.init_signals > 0 else []):
            rows.append(init_signals(name, signame, args.init_signals, args.exit_bound, args.seed + k))
    title = (f"{args.cycles} cycles x {args.walkers} walkers x {args.atoms} atoms on {args.workers} workers: "
             f"a SIGKILL to a random worker every {args.kill_every} s, or a SIGSTOP every {args.freeze_every} s "
             f"(task_timeout {args.task_timeout} s, start_timeout {args.start_timeout} s); "
             f"{args.init_signals} managers per signal given it at a random moment of init (1-3 workers):")
    report_rows("fault_soak", args, title, rows, [
        ("mapper", "mapper", "s"), ("fault", "fault", "s"), ("faults_injected", "faults injected", "d"),
        ("in_init", "landed in init", "d"), ("recovered_segments", "walkers re-run", "d"),
        ("walkers_lost", "walkers lost", "d"), ("hangs", "hangs", "d"), ("orphans", "orphan processes", "d"),
        ("leaked_segments", "leaked segments", "d"), ("slowest_exit_s", "slowest exit s", ".2f"),
        ("wall_s", "wall s", ".1f"), ("error", "error", "s")])
    ok = all(not r.get("walkers_lost") and not r.get("hangs") and not r["orphans"] and not r["leaked_segments"]
             and not r["error"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
