"""``wemap bench``: the transport matrix (and the OpenMM section), as a table, a JSON file and a plot.

`add_bench_parser` registers the subcommand on a parent parser; `run_bench` runs it from the
parsed arguments; `main` does both for ``python -m wemap.benchmarks``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..argtypes import positive_int
from ..pool import usable_cores
from .workloads import WORKLOADS

__all__ = ["add_bench_parser", "add_bench_arguments", "build_parser", "run_bench", "collect", "format_report", "main",
           "parse_atoms"]

logger = logging.getLogger(__name__)

FULL_ATOMS = (1_000, 10_000, 100_000, 1_000_000)
#: 10k atoms: the per-task goal's cell; 100k: the headline goals measured at a tenth of their size
QUICK_ATOMS = (10_000, 100_000)
FULL_WALKERS = (8, 48)
QUICK_WALKERS = (8,)
FULL_REPEATS = 5
QUICK_REPEATS = 3

DESCRIPTION = (
    "Time every mapper available (wemap's Mapper, WorkerMapper, SharedMemWorkerMapper, DaskMapper; wepy's "
    "WorkerMapper, Ray actors, ProcessPoolExecutor) over atoms per walker x walkers x workers, for a no-op "
    "segment (pure transport) and a fixed-duration segment, beside the memcpy floor measured in the same run. "
    "Prints markdown tables and writes them (.md) beside the raw figures (.json) and a plot (.png)."
)


def parse_atoms(text: str) -> int:
    """``1000``, ``10k``, ``1M``, ``1_000_000`` → an atom count."""
    t = text.strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    try:
        value = int(float(t[:-1] if scale > 1 else t) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an atom count: {text!r} (e.g. 1000, 10k, 1M)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"atoms must be positive, got {text!r}")
    return value


def default_workers(quick: bool) -> list[int]:
    """1 and 2, then 4, 8, ... while the machine has the cores; ``--quick``: 2 (1 on one core)."""
    cores = usable_cores()
    if quick:
        return [min(2, cores)]
    out, k = [1, 2], 4
    while k <= cores:
        out.append(k)
        k *= 2
    return out


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``wemap bench`` (shared by ``python -m wemap.benchmarks``)."""
    m = p.add_argument_group("matrix")
    m.add_argument("--quick", action="store_true",
                   help=f"small subset, under a minute: atoms {', '.join(f'{a:,}' for a in QUICK_ATOMS)}, "
                        f"{QUICK_WALKERS[0]} walkers, 2 workers, {QUICK_REPEATS} repeats; slow-starting peers "
                        "(Ray, Dask) left out unless named in --mappers; no OpenMM section unless --openmm; the "
                        "goals measured at 100,000 atoms (they are stated at 1,000,000)")
    m.add_argument("--mappers", nargs="+", metavar="NAME",
                   help="mappers to run (default: every one available): Mapper WorkerMapper SharedMemWorkerMapper "
                        "DaskMapper wepy ray processpool")
    m.add_argument("--atoms", nargs="+", type=parse_atoms, metavar="N",
                   help=f"atoms per walker (default {' '.join(f'{a:,}' for a in FULL_ATOMS)}); 10k, 1M accepted")
    m.add_argument("--walkers", nargs="+", type=positive_int, metavar="N",
                   help=f"walkers per cycle (default {' '.join(map(str, FULL_WALKERS))})")
    m.add_argument("--workers", nargs="+", type=positive_int, metavar="N",
                   help="worker processes (default 1 2, and 4 8 ... up to the cores here)")
    m.add_argument("--workload", nargs="+", choices=tuple(WORKLOADS), metavar="{" + ",".join(WORKLOADS) + "}",
                   help="segment functions: noop (pure transport: hands the walker back), sleep (fixed duration), "
                        "fresh (hands back new arrays, as MD does: no shortcut for a mapper that can refer to "
                        "its input), loop (fresh, each cycle mapping the last cycle's results, as a WE run "
                        "does); default noop and sleep")
    m.add_argument("--sleep-ms", type=float, default=50.0, help="duration of the sleep segment (default: %(default)s)")
    m.add_argument("--repeats", type=positive_int,
                   help=f"timed cycles per cell at least (default {FULL_REPEATS}; --quick {QUICK_REPEATS}); "
                        "short cycles are timed until --min-time is filled")
    m.add_argument("--min-time", type=float, default=0.2, metavar="S",
                   help="time at least this many seconds of cycles per cell, more cycles than --repeats where "
                        "they are short (default: %(default)s; 0: exactly --repeats)")
    m.add_argument("--warmup", type=int, default=1, help="untimed cycles per cell first (default: %(default)s)")
    m.add_argument("--memory-budget", type=float, metavar="GIB",
                   help="plan cells within this many GiB (default: 85%% of the memory available)")
    m.add_argument("--cell-timeout", type=float, default=1200.0, metavar="S",
                   help="give up on a cell (a hung mapper) after this many seconds; 0: never (default: %(default)s)")
    o = p.add_argument_group("OpenMM section")
    o.add_argument("--openmm", action=argparse.BooleanOptionalAction, default=None,
                   help="wemap's vs wepy's OpenMMRunner on a water box (default: on, off with --quick)")
    o.add_argument("--openmm-only", action="store_true", help="run only the OpenMM section")
    o.add_argument("--platform", default="CPU",
                   help="OpenMM platform: CPU, CUDA, OpenCL, HIP, Reference (default: %(default)s)")
    o.add_argument("--openmm-atoms", type=parse_atoms, default=3000, help="water box atoms (default: %(default)s)")
    o.add_argument("--openmm-walkers", type=positive_int, default=4, help="walkers (default: %(default)s)")
    o.add_argument("--openmm-workers", type=positive_int, default=None,
                   help="workers (default: 2, at most the cores)")
    o.add_argument("--openmm-steps", type=positive_int, default=100,
                   help="2 fs steps per segment (default: %(default)s)")
    o.add_argument("--openmm-devices", type=lambda v: [int(d) for d in v.split(",")], default=None,
                   help="GPU DeviceIndex per worker, relative to CUDA_VISIBLE_DEVICES, e.g. 0,1 "
                        "(default: the visible ones)")
    o.add_argument("--openmm-cycles", type=positive_int, default=4,
                   help="cycles; the first is reported apart (default: %(default)s)")
    o.add_argument("--openmm-mapper", choices=("Mapper", "WorkerMapper", "SharedMemWorkerMapper"),
                   default="WorkerMapper", help="mapper both runners go through (default: %(default)s)")
    w = p.add_argument_group("output")
    w.add_argument("--out", type=Path, default=None,
                   help="folder for the .md, .json and .png "
                        "(default: bench/results in a wemap checkout, else ./wemap-bench)")
    w.add_argument("--name", default=None, help="file stem of the .md, .json and .png (default: wemap-bench[-quick])")
    w.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    w.add_argument("--no-progress", action="store_true", help="no progress bar")
    # SUPPRESS: under ``wemap``, whose own -v comes first, an unset -v here must not reset it to 0
    w.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log more (-v info, -vv debug)")


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on ``subparsers`` (from ``ArgumentParser.add_subparsers``); sets ``func``."""
    p = subparsers.add_parser("bench", help="time the mappers and their peers: table, JSON and plot",
                              description=DESCRIPTION)
    add_bench_arguments(p)
    p.set_defaults(func=run_bench)
    return p


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    openmm = args.openmm if args.openmm is not None else not quick
    return {
        "atoms": list(args.atoms or (QUICK_ATOMS if quick else FULL_ATOMS)),
        "walkers": list(args.walkers or (QUICK_WALKERS if quick else FULL_WALKERS)),
        "workers": list(args.workers or default_workers(quick)),
        "workloads": list(dict.fromkeys(args.workload or ("noop", "sleep"))),
        "repeats": args.repeats or (QUICK_REPEATS if quick else FULL_REPEATS),
        "openmm": openmm or args.openmm_only,
        "transport": not args.openmm_only,
        "openmm_workers": args.openmm_workers or min(2, usable_cores()),
    }


def run_bench(args: argparse.Namespace) -> int:
    """Run ``wemap bench`` from parsed arguments: print the report, write JSON and PNG; the exit code."""
    try:
        payload = collect(args)
    except ValueError as exc:
        print(f"wemap bench: {exc}", file=sys.stderr)
        return 2
    print(format_report(payload))
    files = payload["files"]
    print(f"\ntables: {files['md']}\nraw figures: {files['json']}"
          + (f"\nplot: {files['png']}" if files["png"] else ""))
    return 0


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Run what ``args`` asks for, write the tables (.md), the JSON (and PNG); returns the JSON's content.

    Raises ValueError for an unknown mapper name.
    """
    from . import contenders as cont
    from .matrix import HEADLINE, HEADLINE_COMMAND, MatrixSpec, add_ratios, goals, goals_cell, per_task_goal, run_matrix
    from .report import default_out_dir, machine, write_json

    verbose = getattr(args, "verbose", 0)
    if verbose:
        logging.basicConfig(level=logging.INFO if verbose == 1 else logging.DEBUG,
                            format="%(levelname)s %(name)s: %(message)s")
    r = _resolve(args)
    if r["openmm"]:  # a platform this install lacks fails now, not after the matrix or a 100k-atom box
        from .openmm_section import check_platform

        check_platform(args.platform, required=args.openmm_only)
    out_dir = args.out or default_out_dir()
    name = args.name or ("wemap-bench-openmm" if args.openmm_only
                         else "wemap-bench-quick" if args.quick else "wemap-bench")
    notes: list[str] = []
    t_start = time.perf_counter()

    everyone = cont.discover()
    chosen = cont.select(everyone, args.mappers)
    named = {c.key for c in chosen} if args.mappers else set()
    listing = []
    run_list = []
    for c in chosen:
        entry = {"key": c.key, "mapper": c.label, "kind": c.kind, "available": c.available, "note": c.reason}
        if not c.available:
            notes.append(f"{c.label} left out: {c.reason}")
        elif args.quick and c.slow_start and c.key not in named:
            entry["note"] = "left out by --quick (slow to start); name it in --mappers to include it"
            notes.append(f"{c.label} left out by --quick: slow to start (name it in --mappers to include it)")
        else:
            run_list.append(c)
        listing.append(entry)

    spec = MatrixSpec(
        atoms=r["atoms"], walkers=r["walkers"], workers=r["workers"], workloads=r["workloads"],
        repeats=r["repeats"], warmup=args.warmup, sleep_s=args.sleep_ms / 1e3, min_time_s=max(0.0, args.min_time),
        memory_budget_bytes=int(args.memory_budget * 2**30) if args.memory_budget else None,
        cell_timeout_s=args.cell_timeout or None,
    )
    json_path = Path(out_dir) / f"{name}.json"
    payload: dict[str, Any] = {
        "benchmark": "wemap bench",
        "schema": 2,  # 2: worker_cpu_s_per_cycle (a mean over the timed block), repeats as timed, min_time_s
        "complete": False,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
        "matrix": spec.as_dict() if r["transport"] else None,
        "machine": machine(),
        "contenders": listing,
        "rows": [],
        "headline_cell": HEADLINE,
        "goals_cell": HEADLINE,
        "goals": [],
        "openmm": None,
        "notes": notes,
        "files": {"json": str(json_path), "png": None, "md": None},
    }

    def checkpoint(rows_so_far: list[dict[str, Any]]) -> None:
        add_ratios(rows_so_far)
        write_json(json_path, dict(payload, rows=rows_so_far, wall_s=time.perf_counter() - t_start))

    rows: list[dict[str, Any]] = []
    goal_rows: list[dict[str, Any]] = []
    if r["transport"]:
        from .peers import shutdown_ray

        try:
            rows = run_matrix(spec, run_list, progress=not args.no_progress, checkpoint=checkpoint)
        finally:
            shutdown_ray()
        add_ratios(rows)
        cell = goals_cell(rows)
        payload["goals_cell"] = cell
        goal_rows = goals(rows, cell) + [per_task_goal(rows)]
        if cell != HEADLINE:
            notes.append(f"the goals above are measured at {cell['atoms']:,} atoms; they are stated at "
                         f"{HEADLINE['atoms']:,}, where `{HEADLINE_COMMAND}` measures them")
        skipped = [x for x in rows if x["status"] == "skipped"]
        if skipped:
            notes.append(f"{len(skipped)} cell(s) skipped for memory; their rows say why")
        failed = [x for x in rows if x["status"] == "failed"]
        for x in failed:
            notes.append(f"{x['mapper']} failed on {x['workload']}, {x['walkers']} walkers x {x['atoms']} atoms, "
                         f"{x['workers']} workers: {x['reason']}")

    openmm_result: dict[str, Any] | None = None
    if r["openmm"]:
        from .openmm_section import run_openmm_section

        try:
            openmm_result = run_openmm_section(
                platform=args.platform, atoms=args.openmm_atoms, walkers=args.openmm_walkers,
                workers=r["openmm_workers"], steps=args.openmm_steps, cycles=args.openmm_cycles,
                mapper=args.openmm_mapper, devices=args.openmm_devices,
            )
        except Exception as exc:  # keep the transport figures already measured
            logger.exception("OpenMM section failed")
            openmm_result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "rows": []}
        if openmm_result["status"] != "ok":
            notes.append(f"OpenMM section {openmm_result['status']}: {openmm_result['reason']}")
    else:
        notes.append("OpenMM section not run (on by default without --quick; --openmm to ask for it)")

    payload.update(complete=True, rows=rows, goals=goal_rows, openmm=openmm_result,
                   wall_s=time.perf_counter() - t_start)
    png_path = None
    if rows and not args.no_plot:
        from .plot import plot_matrix

        png_path = plot_matrix(rows, Path(out_dir) / f"{name}.png")
    md_path = Path(out_dir) / f"{name}.md"
    payload["files"] = {"json": str(json_path), "png": None if png_path is None else str(png_path), "md": str(md_path)}
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(format_report(payload) + "\n")
    write_json(json_path, payload)
    return payload


def format_report(payload: dict[str, Any]) -> str:
    """Everything a run prints: machine line, tables, goals, OpenMM section, notes."""
    from .summary import goals_table, matrix_tables, openmm_table

    m = payload["machine"]
    parts = [(f"## wemap bench — {m['cpu']}, {m['usable_cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, "
              f"numpy {m['numpy']}, OpenMM {m['openmm']}, load {m['load_average']}\n")]
    if payload["rows"]:
        parts.append(matrix_tables(payload["rows"]))
        cell, stated = payload.get("goals_cell", payload["headline_cell"]), payload["headline_cell"]
        where = "" if cell == stated else f"; stated for {stated['atoms']:,} atoms"
        parts.append(f"### goals (ratios in the cell {cell['walkers']} walkers x {cell['atoms']:,} atoms x "
                     f"{cell['workers']} workers, no-op{where}; the per-task goal at its own cell)\n")
        parts.append(goals_table(payload["goals"]) + "\n")
    if payload["openmm"] and payload["openmm"]["status"] == "ok":
        parts.append(openmm_table(payload["openmm"]) + "\n")
    if payload["notes"]:
        parts.append("notes:\n" + "\n".join(f"- {n}" for n in payload["notes"]))
    return "\n".join(parts)


def build_parser(prog: str = "python -m wemap.benchmarks") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_bench_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wemap.benchmarks [options]``."""
    return run_bench(build_parser().parse_args(argv))
