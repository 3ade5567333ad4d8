"""Weighted ensemble on one GPU node: `SharedMemWorkerMapper` with one worker per GPU, or k per GPU.

Each worker keeps one OpenMM ``Context`` on its GPU for the whole run. Worker ``i`` gets
``DeviceIndex = devices[i]``, counted inside ``CUDA_VISIBLE_DEVICES`` (what SLURM sets to the
GPUs it granted), so on a node where SLURM gave the job GPUs 4-7 the devices are 0-3. With
``--workers-per-gpu 2`` each GPU gets two workers (``devices = [0, 0, 1, 1, ...]``): that pays
when one segment leaves the GPU idle part of the time (small systems), best with NVIDIA MPS
(see ``gpu_node.sbatch``).

    sbatch examples/gpu_node.sbatch                                   # on the cluster
    python examples/gpu_node.py --platform CPU --workers 2 --cycles 2 --steps 100   # anywhere

``--pdb`` takes a protein in implicit solvent (amber14 + OBC2, no cutoff, minimised first):
a solvated PDB needs its own system. Without it the run uses the alanine dipeptide wemap ships.
The progress coordinate is the backbone φ of the first residue that has both neighbours.
Writes the per-cycle statistics as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openmm
from openmm import app, unit

from wemap import SharedMemWorkerMapper, sim
from wemap.openmm import GPU_PLATFORMS, OpenMMRunner, visible_devices, walkers_from_pdb
from wemap.resample import BinnedResampler
from wemap.systems import alanine_dipeptide_pdb, backbone_dihedral


def worker_devices(gpus: Sequence[int], per_gpu: int) -> list[int]:
    """The ``DeviceIndex`` of each worker: every GPU ``per_gpu`` times, a GPU's workers side by side."""
    if per_gpu < 1:
        raise ValueError(f"workers per GPU must be at least 1, got {per_gpu}")
    return [gpu for gpu in gpus for _ in range(per_gpu)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pdb", default=None, help="implicit-solvent structure (default: the shipped alanine dipeptide)")
    p.add_argument("--walkers", type=int, default=48)
    p.add_argument("--per-bin", type=int, default=4, help="walkers kept in each occupied bin")
    p.add_argument("--cycles", type=int, default=100)
    p.add_argument("--steps", type=int, default=10_000, help="2 fs steps per segment")
    p.add_argument("--platform", default=os.environ.get("WEMAP_PLATFORM", "CUDA"),
                   help="OpenMM platform (default: CUDA, or $WEMAP_PLATFORM)")
    p.add_argument("--workers-per-gpu", type=int, default=int(os.environ.get("WORKERS_PER_GPU", "1")),
                   help="workers sharing each GPU (default 1, or $WORKERS_PER_GPU)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes on a CPU platform (GPU platforms: one per GPU times --workers-per-gpu)")
    p.add_argument("--out", type=Path, default=Path("we_stats.json"))
    args = p.parse_args(argv)

    if args.platform in GPU_PLATFORMS:
        try:
            gpus = visible_devices()
        except ValueError as exc:  # a mask that hides every GPU, or no GPU driver here
            p.error(f"no GPUs are visible: {exc}")
        if not gpus:
            p.error("no GPUs are visible: run under SLURM with --gres=gpu:N (or set CUDA_VISIBLE_DEVICES)")
        per_worker = worker_devices(gpus, args.workers_per_gpu)
        devices: list[int] | None = per_worker
        num_workers = len(per_worker)
    else:
        devices, num_workers = None, args.workers or 1

    walkers, system, topology = walkers_from_pdb(
        args.pdb or alanine_dipeptide_pdb(), args.walkers, nonbondedMethod=app.NoCutoff, constraints=app.HBonds,
        seed=1,
    )
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.002 * unit.picoseconds)
    runner = OpenMMRunner(system, integrator, platform=args.platform, devices=devices)
    phi = backbone_dihedral(topology, "phi")
    resampler = BinnedResampler(np.arange(-150.0, 180.0, 30.0), walkers_per_bin=args.per_bin, progress=phi, seed=1)
    mapper = SharedMemWorkerMapper(num_workers=num_workers)
    print(f"{num_workers} workers on {args.platform}, devices {devices}; {args.walkers} walkers, "
          f"{args.cycles} cycles of {args.steps} steps", flush=True)

    def report(stats: sim.CycleStats, walkers: list) -> None:
        print(f"cycle {stats.cycle_idx}: {stats.n_segments} segments in {stats.segment_wall_s:.2f} s "
              f"(mapper overhead {stats.mapper_overhead_s:.3f} s), {stats.n_walkers} walkers kept, "
              f"phi {stats.progress_min:.0f}..{stats.progress_max:.0f}", flush=True)

    result = sim.run(walkers, runner.run_segment, mapper, args.cycles, args.steps, resampler=resampler,
                     reporters=[report])
    stats = {"platform": args.platform, "devices": devices, "num_workers": num_workers,
             "cycles": [c.as_dict() for c in result.cycles]}
    args.out.write_text(json.dumps(stats, indent=2))
    print(f"wrote {args.out}")
    return stats


if __name__ == "__main__":  # the workers import this module (forkserver): start nothing at import
    main()
