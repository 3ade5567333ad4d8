"""Segment stage per cycle: wemap's OpenMMRunner (one Context per worker, reused) vs wepy's
OpenMMRunner (a new Context every segment), same water box, walkers, steps, platform and mapper.

Also reports the fraction of the segment stage spent inside ``integrator.step``. A thin front
end to ``wemap bench --openmm-only`` (`wemap.benchmarks.openmm_section`); any other
``wemap bench`` option is passed through.

    python bench/openmm_runner.py                                  # CPU, 3000-atom box
    python bench/openmm_runner.py --platform CUDA --atoms 100000 --walkers 8 --steps 500 --devices 0
    python bench/openmm_runner.py --mapper Mapper --workers 1      # in-process, no worker pool
"""

from __future__ import annotations

import argparse
import sys

from wemap.benchmarks import main as bench_main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Other options go to wemap bench (python -m wemap.benchmarks --help).")
    ap.add_argument("--atoms", default="3000", help="water box size in atoms (TIP3P, PME)")
    ap.add_argument("--walkers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100, help="2 fs steps per segment")
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mapper", default="WorkerMapper", choices=("Mapper", "WorkerMapper", "SharedMemWorkerMapper"))
    ap.add_argument("--platform", default="CPU", help="CPU (default), CUDA, OpenCL, HIP, Reference")
    ap.add_argument("--devices", default=None, help="GPU DeviceIndex list for the workers, e.g. 0,1")
    ap.add_argument("--out", default="bench/results", help="folder for the JSON")
    args, rest = ap.parse_known_args(argv)
    forwarded = [
        "--openmm-only", "--platform", args.platform, "--openmm-atoms", args.atoms,
        "--openmm-walkers", str(args.walkers), "--openmm-steps", str(args.steps),
        "--openmm-cycles", str(args.cycles), "--openmm-workers", str(args.workers),
        "--openmm-mapper", args.mapper, "--out", args.out,
    ]
    if args.devices:
        forwarded += ["--openmm-devices", args.devices]
    return bench_main(forwarded + rest)


if __name__ == "__main__":
    sys.exit(main())
