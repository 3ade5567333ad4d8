"""Weighted ensemble over many nodes: `wemap.DaskMapper` on a Dask cluster (see docs/dask.md).

Three ways to get the cluster, the same run on each:

    python examples/dask_cluster.py --workers 2 --cycles 3 --steps 100     # a LocalCluster on this machine
    sbatch examples/dask_cluster.sbatch       # SLURM: a scheduler and one `dask worker` per GPU, then
                                              # python examples/dask_cluster.py --scheduler-file FILE ...
    python examples/dask_cluster.py --slurm-jobs 8 --platform CUDA         # dask-jobqueue submits the workers

Each Dask worker runs one segment at a time (``--nthreads 1``, and ``resources={"GPU": 1}`` on
GPU platforms) and keeps one OpenMM ``Context`` for the whole run. The system is the alanine
dipeptide wemap ships (implicit solvent), binned on its backbone φ. Needs
``pip install 'wemap[openmm,dask]'`` (``wemap[jobqueue]`` for ``--slurm-jobs``). The runner checks
the platform where it is made: run this on a login node without a GPU driver (``--slurm-jobs``)
with ``WEMAP_SKIP_PLATFORM_CHECK=1`` (docs/gpu.md).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from wemap import sim
from wemap.dask_mapper import DaskMapper
from wemap.openmm import GPU_PLATFORMS, OpenMMRunner
from wemap.resample import BinnedResampler
from wemap.systems import alanine_dipeptide, backbone_dihedral


def slurm_cluster(jobs: int, gpu: bool) -> Any:
    """A dask-jobqueue ``SLURMCluster`` of ``jobs`` one-worker jobs (one GPU each when ``gpu``); edit for your site."""
    import dask
    from dask_jobqueue import SLURMCluster

    dask.config.set({"distributed.scheduler.allowed-failures": 2,       # re-runs of a walker whose worker died
                     "distributed.scheduler.worker-saturation": 1.0})   # no walkers queued on a worker
    cluster = SLURMCluster(
        cores=1, processes=1, memory="8GB", walltime="24:00:00", job_cpu=4,
        job_extra_directives=["--gres=gpu:1"] if gpu else [],
        worker_extra_args=["--resources", "GPU=1"] if gpu else [],
    )
    cluster.scale(jobs=jobs)
    return cluster


def main(argv: list[str] | None = None) -> sim.RunResult:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler-file", help="join the cluster whose scheduler wrote this file")
    where.add_argument("--scheduler", help="join the cluster at this scheduler address (tcp://host:8786)")
    where.add_argument("--slurm-jobs", type=int, help="submit this many worker jobs with dask-jobqueue")
    p.add_argument("--workers", type=int, default=2,
                   help="workers: started on this machine, or waited for on the cluster (default: %(default)s)")
    p.add_argument("--walkers", type=int, default=16)
    p.add_argument("--cycles", type=int, default=10)
    p.add_argument("--steps", type=int, default=1000, help="2 fs steps per segment")
    p.add_argument("--platform", default="CPU", help="OpenMM platform on the workers (default: %(default)s)")
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for the workers")
    args = p.parse_args(argv)

    gpu = args.platform in GPU_PLATFORMS
    resources = {"GPU": 1} if gpu else None
    if args.slurm_jobs:
        mapper = DaskMapper(slurm_cluster(args.slurm_jobs, gpu), num_workers=args.slurm_jobs,
                            resources=resources, start_timeout=args.start_timeout)
    elif args.scheduler_file or args.scheduler:
        mapper = DaskMapper(args.scheduler_file or args.scheduler, num_workers=args.workers,
                            resources=resources, start_timeout=args.start_timeout)
    else:  # a LocalCluster that the mapper starts and stops
        mapper = DaskMapper(num_workers=args.workers, start_timeout=args.start_timeout)

    ala = alanine_dipeptide()
    # no devices: each worker takes the GPUs it sees in turn, which with one GPU bound to each Dask
    # worker is its own GPU, DeviceIndex 0 (docs/dask.md); nothing is checked against this node's GPUs
    runner = OpenMMRunner(ala.system, ala.integrator(), platform=args.platform)
    phi = backbone_dihedral(ala.topology, "phi")
    resampler = BinnedResampler(np.arange(-150.0, 180.0, 30.0), walkers_per_bin=4, progress=phi, seed=1)

    def report(stats: sim.CycleStats, walkers: list) -> None:
        busy = {k: round(sum(v), 3) for k, v in stats.worker_segment_times.items()}
        print(f"cycle {stats.cycle_idx}: {stats.n_segments} segments in {stats.segment_wall_s:.2f} s, "
              f"busy s per worker {busy}, {stats.n_walkers} walkers kept, weight sum {stats.weight_sum:.15f}",
              flush=True)

    result = sim.run(ala.walkers(args.walkers, seed=1), runner.run_segment, mapper, args.cycles, args.steps,
                     resampler=resampler, reporters=[report], show_progress=False)
    print(f"{len(result.cycles)} cycles on {len(result.cycles[-1].worker_segment_times)} Dask workers")
    return result


if __name__ == "__main__":  # Dask's worker processes import this module: start nothing at import
    main()
