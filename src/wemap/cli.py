"""The ``wemap`` command: ``wemap demo`` runs a small weighted-ensemble simulation and shows where
the time went, cycle by cycle.

Each subcommand is one ``add_*_parser(subparsers)`` function in `SUBCOMMANDS` that registers
its arguments and sets ``func`` (called with the parsed arguments, returns an exit code).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform as _platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import __version__
from .argtypes import positive_float, positive_int
from .benchmarks import add_bench_parser

__all__ = ["main", "build_parser", "SUBCOMMANDS", "resolve_mapper", "format_cycle_table", "CycleTable", "CommandError",
           "require_platform"]

logger = logging.getLogger(__name__)

MAPPER_NAMES = ("Mapper", "WorkerMapper", "SharedMemWorkerMapper")


def resolve_mapper(name: str) -> type:
    """The mapper class called ``name``; `WorkerMapper` (with a warning) if the shared-memory one is unavailable."""
    import wemap

    try:
        return getattr(wemap, name)
    except (AttributeError, ImportError) as exc:
        if name != "SharedMemWorkerMapper":
            raise
        logger.warning("SharedMemWorkerMapper is not available (%s); using WorkerMapper", exc)
        return wemap.WorkerMapper


def _devices(text: str) -> list[int]:
    try:
        devices = [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        devices = []
    if not devices or min(devices) < 0:
        raise argparse.ArgumentTypeError(f"--devices takes comma-separated GPU indices such as 0,1,2,3, got {text!r}")
    return devices


# -- wemap demo ------------------------------------------------------------------------------------
DEMO_EPILOG = """\
The table, one row per cycle as it ends:
  cycle        the cycle's index, from 0
  ran          walkers whose MD segments ran in this cycle
  kept         walkers after resampling: what the next cycle runs (binned split/merge keeps --per-bin
               walkers in every occupied bin, so it differs from --walkers)
  weight sum   sum of the kept walkers' weights: 1 up to float rounding (weight is conserved)
  phi min/max  range of the progress coordinate (degrees) over the walkers that came out of the segments
  segments s   wall time of the segment stage (mapper.map over every walker)
  per-worker busy s [segments]
               each worker's summed segment time and, in brackets, how many segments it ran
  overhead s   segments s minus the busiest worker's busy time: what the mapper cost beyond the MD
               (moving walkers, scheduling, workers waiting for each other)
  in step %    share of the workers' busy time spent inside OpenMM's integrator.step; the rest sets and
               reads the state and, on a worker's first segment, builds its Context
"""


class CommandError(Exception):
    """A mistake in the command line or the install, reported as one line (no traceback)."""


def add_demo_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a small WE simulation of alanine dipeptide and show per-cycle timings",
        description=(
            "Weighted-ensemble run of alanine dipeptide (amber14, OBC2 implicit solvent) binned on a backbone "
            "dihedral, every segment on a pool of OpenMM workers; prints a line per cycle as it goes: walkers, "
            "weights, progress coordinate and where the segment-stage time went. About a minute on 2 cores by "
            "default."
        ),
        epilog=DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--walkers", type=positive_int, default=8, help="initial walkers (default: %(default)s)")
    p.add_argument("--per-bin", type=positive_int, default=4,
                   help="walkers kept per occupied bin (default: %(default)s)")
    p.add_argument("--cycles", type=positive_int, default=40, help="WE cycles (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=1000, help="2 fs steps per segment (default: %(default)s)")
    p.add_argument("--workers", type=positive_int, default=2, help="worker processes (default: %(default)s)")
    p.add_argument("--platform", default="CPU",
                   help="OpenMM platform: CPU, Reference, CUDA, OpenCL, HIP (default: %(default)s)")
    p.add_argument("--devices", type=_devices, default=None,
                   help="GPU DeviceIndex per worker, relative to CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3 "
                        "(worker i gets devices[i %% n])")
    p.add_argument("--mapper", choices=MAPPER_NAMES, default="SharedMemWorkerMapper",
                   help="work mapper (default: %(default)s, WorkerMapper if it is unavailable)")
    p.add_argument("--coordinate", choices=("phi", "psi"), default="phi",
                   help="progress coordinate (default: %(default)s)")
    p.add_argument("--bin-width", type=positive_float, default=30.0, help="bin width in degrees (default: %(default)s)")
    p.add_argument("--seed", type=positive_int, default=None,
                   help="positive seed for velocities, integrators and resampling (default: fresh randomness; "
                        "OpenMM reads 0 as 'random'); results repeat exactly only with one worker on the "
                        "Reference platform (CPU sums in threads, so runs differ in the last digits)")
    p.add_argument("--out", type=Path, default=None, help="write the settings and per-cycle stats to this JSON file")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is one only when stderr is a terminal)")
    # SUPPRESS: an unset -v here must not reset a -v given before the subcommand
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output (-vv for debug)")
    p.set_defaults(func=run_demo)


def require_platform(name: str) -> None:
    """Raise `CommandError` unless this OpenMM install can run platform ``name`` (the workers share the install).

    The check is `wemap.openmm.platforms.require_platform`'s: it names the plugin's load failures and
    the extra that installs the platform.
    """
    from .openmm.platforms import require_platform as check

    try:
        check(name)
    except ValueError as exc:  # PlatformUnavailableError, or DeviceError for a mask that hides every GPU
        raise CommandError(str(exc)) from exc


def run_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from . import sim
    from .errors import WemapError

    try:
        from .openmm import OpenMMRunner
        from .resample import BinnedResampler
        from .systems import alanine_dipeptide, backbone_dihedral
    except ImportError as exc:  # OpenMM is an optional extra
        raise CommandError(str(exc)) from exc
    require_platform(args.platform)

    mapper_cls = resolve_mapper(args.mapper)
    num_workers = 1 if mapper_cls.__name__ == "Mapper" else args.workers
    t_start = time.perf_counter()
    seed = args.seed
    system = alanine_dipeptide()
    coordinate = backbone_dihedral(system.topology, args.coordinate)
    try:
        runner = OpenMMRunner(
            system.system, system.integrator(seed=seed or 0), platform=args.platform, devices=args.devices,
        )
        props, _ = runner.context_settings(0, num_workers)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    width = args.bin_width
    edges = np.arange(-180.0 + width, 180.0, width)
    resampler = BinnedResampler(edges, args.per_bin, progress=coordinate, seed=seed)
    walkers = system.walkers(args.walkers, seed=seed)
    mapper = mapper_cls(num_workers=num_workers)
    print(
        f"wemap demo: {system.name}, {system.n_atoms} atoms; {args.walkers} walkers, {args.per_bin} per "
        f"{width:g}-degree bin of {args.coordinate}; {args.cycles} cycles of {args.steps} steps "
        f"({args.steps * system.timestep_ps:g} ps); {type(mapper).__name__} with {num_workers} worker(s) on "
        f"OpenMM {args.platform} {props}",
        flush=True,
    )
    table = CycleTable(args.coordinate, num_workers, args.cycles)
    print("\n".join(table.header()), flush=True)

    def print_row(stats: Any, _walkers: list) -> None:
        tqdm.write(table.row(stats), file=sys.stdout)
        sys.stdout.flush()

    try:
        result = sim.run(
            walkers,
            runner.run_segment,
            mapper,
            args.cycles,
            args.steps,
            resampler=resampler,
            reporters=[print_row],
            show_progress=False if args.no_progress else None,
        )
    except WemapError as exc:
        print(f"wemap demo: the run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        runner.release()
    total = time.perf_counter() - t_start
    seg = sum(c.segment_wall_s for c in result.cycles)
    over = sum(c.mapper_overhead_s for c in result.cycles)
    print(
        f"\n{len(result.cycles)} cycles in {total:.1f} s (segment stage {seg:.1f} s, of which mapper overhead "
        f"{over:.2f} s); final weight sum {result.cycles[-1].weight_sum!r}\n\n"
        + DEMO_EPILOG.replace("phi min/max", f"{args.coordinate} min/max".ljust(11)).rstrip()
    )
    if args.out is not None:
        payload = {
            "command": "wemap demo",
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
            "mapper": type(mapper).__name__,
            "num_workers": num_workers,
            "platform_properties_worker0": props,
            "system": system.name,
            "n_atoms": system.n_atoms,
            "python": sys.version.split()[0],
            "host": _platform.node(),
            "cores": os.cpu_count(),
            "total_s": total,
            "cycles": [c.as_dict() for c in result.cycles],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.out}")
    return 0


class CycleTable:
    """Fixed-width rows of `wemap.sim.CycleStats`, printed one at a time as cycles end (see `DEMO_EPILOG`)."""

    def __init__(self, coordinate: str = "progress", num_workers: int = 1, n_cycles: int = 0) -> None:
        worker_cell = " ".join(f"w{k}:00.00[00]" for k in range(max(1, num_workers)))
        self.headers = [
            "cycle", "ran", "kept", "weight sum", f"{coordinate} min", f"{coordinate} max", "segments s",
            "per-worker busy s [segments]", "overhead s", "in step %",
        ]
        samples = [str(max(0, n_cycles - 1)), "000", "000", f"{1.0:.15f}", "-180.0", "-180.0", "00.000",
                   worker_cell, "0.0000", "100"]
        self.widths = [max(len(h), len(x)) for h, x in zip(self.headers, samples)]

    def header(self) -> list[str]:
        """The column names and a rule under them."""
        return [self._line(self.headers), self._line(["-" * w for w in self.widths])]

    def row(self, c: Any) -> str:
        """One cycle's line."""
        workers = " ".join(f"w{k}:{sum(v):.2f}[{len(v)}]" for k, v in sorted(c.worker_segment_times.items()))
        busy = sum(sum(v) for v in c.worker_segment_times.values())
        in_step = f"{100 * c.segment_timings_sum[2] / busy:.0f}" if c.segment_timings_sum and busy > 0 else "-"
        return self._line([
            str(c.cycle_idx), str(c.n_segments), str(c.n_walkers), f"{c.weight_sum:.15f}",
            "-" if c.progress_min is None else f"{c.progress_min:.1f}",
            "-" if c.progress_max is None else f"{c.progress_max:.1f}",
            f"{c.segment_wall_s:.3f}", workers, f"{c.mapper_overhead_s:.4f}", in_step,
        ])

    def _line(self, cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(w) for cell, w in zip(cells, self.widths))


def format_cycle_table(cycles: Sequence[Any], coordinate: str = "progress") -> str:
    """A plain-text table of `wemap.sim.CycleStats`: the header and one row per cycle."""
    workers = max((len(c.worker_segment_times) for c in cycles), default=1)
    table = CycleTable(coordinate, workers, len(cycles))
    return "\n".join(table.header() + [table.row(c) for c in cycles])


#: every subcommand's ``add_*_parser``; add one here to add a subcommand
SUBCOMMANDS: list[Callable[[Any], Any]] = [add_demo_parser, add_bench_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wemap", description="Work mappers for weighted-ensemble molecular dynamics."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--version", action="version", version=f"wemap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wemap`` console script and ``python -m wemap``."""
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        logger.debug("wemap %s failed", args.command, exc_info=True)
        print(f"wemap {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # ``wemap demo | head``: the reader left; the run has already cleaned up
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
