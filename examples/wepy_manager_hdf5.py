"""A wepy simulation run by wepy's own ``Manager`` with wemap's mapper and OpenMM runner.

wemap replaces two pieces of a wepy script: the work mapper (`wemap.SharedMemWorkerMapper`
moves walkers through shared memory) and the runner (one OpenMM ``Context`` per worker, kept
for the whole run). Everything else is wepy's: walkers, REVO resampling, and the
``WepyHDF5Reporter`` that records the run. The system is alanine dipeptide in implicit
solvent (22 atoms, shipped with wemap), so the example runs on a laptop's CPU in seconds::

    python examples/wepy_manager_hdf5.py                      # 8 walkers, 10 cycles, CPU
    python examples/wepy_manager_hdf5.py --platform CUDA --workers 4 --steps 10000

``--runner wepy`` (the default) is `wemap.openmm.WepyOpenMMRunner`: wepy's runner's arguments,
walkers (``OpenMMWalker``) and recorded datasets. ``--runner lean`` is `wemap.openmm.OpenMMRunner`:
plain arrays, less per segment, plus each segment's timings in the file (docs/openmm.md compares
them). Needs ``pip install 'wemap[openmm,wepy]'`` (wepy's HDF5 reporter also needs h5py and mdtraj,
which the ``wepy`` extra installs). Read the result with ``wepy.hdf5.WepyHDF5``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import openmm
from wepy.reporter.hdf5 import WepyHDF5Reporter
from wepy.resampling.distances.distance import Distance
from wepy.resampling.resamplers.revo import REVOResampler
from wepy.runners.openmm import OpenMMState, OpenMMWalker
from wepy.sim_manager import Manager
from wepy.walker import Walker

from wemap import SharedMemWorkerMapper
from wemap.openmm import (
    WEPY_FEATURE_DTYPES,
    WEPY_FEATURE_SHAPES,
    OpenMMRunner,
    WepyOpenMMRunner,
    array_walkers,
    json_topology,
)
from wemap.systems import MDSystem, alanine_dipeptide, backbone_dihedral, dihedral


def wepy_walkers(ala: MDSystem, n: int, seed: int = 1) -> list:
    """``n`` of wepy's ``OpenMMWalker``s at the system's positions, velocities drawn at its temperature.

    `array_walkers` gives them `wemap.openmm.ArrayState` states, whose arrays travel through shared
    memory from the first cycle (an ``openmm.State`` would travel pickled until the runner's first
    results replace it).
    """
    context = openmm.Context(ala.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(ala.positions)
    context.setVelocitiesToTemperature(ala.temperature, seed)
    state = context.getState(getPositions=True, getVelocities=True, getEnergy=True, getForces=True,
                             getParameters=True)
    return array_walkers(OpenMMWalker(OpenMMState(state), 1.0 / n) for _ in range(n))


class PhiPsiDistance(Distance):
    """How far apart two walkers are on the backbone dihedrals φ and ψ (degrees, periodic).

    REVO clones walkers that are far from the others and merges those close together, so this
    spreads the ensemble over the Ramachandran plane.
    """

    def __init__(self, phi_atoms: tuple[int, int, int, int], psi_atoms: tuple[int, int, int, int]) -> None:
        self.phi_atoms, self.psi_atoms = phi_atoms, psi_atoms

    def image(self, state: Any) -> np.ndarray:
        positions = np.asarray(state["positions"])
        return np.array([dihedral(positions, self.phi_atoms), dihedral(positions, self.psi_atoms)])

    def image_distance(self, image_a: np.ndarray, image_b: np.ndarray) -> float:
        d = np.abs(image_a - image_b) % 360.0
        return float(np.linalg.norm(np.minimum(d, 360.0 - d)))


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runner", choices=("wepy", "lean"), default="wepy",
                   help="wepy: WepyOpenMMRunner, wepy's walkers and datasets; lean: OpenMMRunner (default: wepy)")
    p.add_argument("--walkers", type=int, default=8)
    p.add_argument("--cycles", type=int, default=10)
    p.add_argument("--steps", type=int, default=500, help="2 fs steps per segment")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--platform", default="CPU", help="OpenMM platform: CPU, CUDA, OpenCL, HIP, Reference")
    p.add_argument("--out", type=Path, default=Path("wepy_run.wepy.h5"), help="the HDF5 file to write")
    args = p.parse_args(argv)

    ala = alanine_dipeptide()
    runner: OpenMMRunner
    extra: dict[str, Any] = {}
    if args.runner == "wepy":
        runner = WepyOpenMMRunner(ala.system, ala.topology, ala.integrator(), platform=args.platform)
        walkers = wepy_walkers(ala, args.walkers)
    else:
        runner = OpenMMRunner(ala.system, ala.integrator(), platform=args.platform)
        walkers = ala.walkers(args.walkers, seed=1, walker_type=Walker)  # wepy's plain Walker
        # the lean runner's extra per-walker field (seconds per segment phase), beside wepy's defaults
        extra = {"feature_shapes": WEPY_FEATURE_SHAPES, "feature_dtypes": WEPY_FEATURE_DTYPES}

    phi, psi = backbone_dihedral(ala.topology, "phi"), backbone_dihedral(ala.topology, "psi")
    resampler = REVOResampler(
        distance=PhiPsiDistance(phi.atoms, psi.atoms), init_state=walkers[0].state,
        char_dist=10.0, merge_dist=5.0, pmin=1e-12, pmax=0.5, seed=1,
    )
    reporter = WepyHDF5Reporter(file_path=str(args.out), mode="w", topology=json_topology(ala.topology),
                                resampler=resampler, **extra)
    mapper = SharedMemWorkerMapper(num_workers=args.workers)
    manager = Manager(walkers, runner=runner, resampler=resampler, work_mapper=mapper, reporters=[reporter])
    final, _ = manager.run_simulation(args.cycles, args.steps, num_workers=args.workers)
    total = sum(w.weight for w in final)
    print(f"{args.cycles} cycles of {len(final)} walkers, weight sum {total:.15f}; wrote {args.out}")
    return args.out


if __name__ == "__main__":  # the workers import this module (forkserver): start nothing at import
    main()
