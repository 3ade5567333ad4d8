"""Ready-made OpenMM systems: alanine dipeptide for the demo, water boxes of any size for benchmarks.

The alanine dipeptide structure ships in ``wemap/data/alanine-dipeptide.pdb`` (built from
internal coordinates by ``tools/make_alanine_dipeptide.py``); its natural weighted-ensemble
progress coordinates are the backbone dihedrals phi and psi (`backbone_dihedral`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from .openmm import app, openmm, unit, walkers_from_positions
from .walker import Walker

__all__ = [
    "MDSystem",
    "Dihedral",
    "dihedral",
    "backbone_dihedral",
    "alanine_dipeptide",
    "alanine_dipeptide_pdb",
    "water_box",
]

logger = logging.getLogger(__name__)

#: TIP3P waters per nm³ in OpenMM's pre-equilibrated box, a little under the real figure
#: so the first guess at a box holds at least the waters asked for
_WATERS_PER_NM3 = 32.0


@dataclass
class MDSystem:
    """An OpenMM system ready to simulate: positions in nm, box vectors (3, 3) in nm, temperature in K."""

    name: str
    system: openmm.System
    topology: app.Topology
    positions: np.ndarray
    box_vectors: np.ndarray
    temperature: float = 300.0
    timestep_ps: float = 0.002
    friction_per_ps: float = 1.0

    @property
    def n_atoms(self) -> int:
        return self.system.getNumParticles()

    def integrator(self, seed: int = 0) -> openmm.LangevinMiddleIntegrator:
        """A Langevin integrator at this system's temperature (seed 0: OpenMM picks a unique one per Context)."""
        integ = openmm.LangevinMiddleIntegrator(self.temperature, self.friction_per_ps, self.timestep_ps)
        integ.setRandomNumberSeed(seed)
        return integ

    def walkers(self, n_walkers: int, seed: int | None = None, walker_type: type = Walker) -> list:
        """``n_walkers`` walkers at these positions with velocities drawn at the temperature, weights 1/n."""
        return walkers_from_positions(
            self.system,
            self.positions,
            n_walkers,
            box_vectors=self.box_vectors,
            temperature=self.temperature,
            seed=seed,
            walker_type=walker_type,
        )


def dihedral(positions: np.ndarray, atoms: tuple[int, int, int, int]) -> float:
    """The dihedral angle of four atoms, in degrees in (-180, 180]."""
    p = np.asarray(positions, dtype=np.float64)[list(atoms)]
    b0, b1, b2 = p[0] - p[1], p[2] - p[1], p[3] - p[2]
    b1 = b1 / np.linalg.norm(b1)
    v = b0 - np.dot(b0, b1) * b1
    w = b2 - np.dot(b2, b1) * b1
    return math.degrees(math.atan2(np.dot(np.cross(b1, v), w), np.dot(v, w)))


@dataclass(frozen=True)
class Dihedral:
    """Progress coordinate: a dihedral (degrees) read from a walker's ``positions``; picklable."""

    atoms: tuple[int, int, int, int]
    name: str = "dihedral"

    def __call__(self, walker: Any) -> float:
        return dihedral(walker.state["positions"], self.atoms)


def backbone_dihedral(topology: app.Topology, name: str = "phi", residue_index: int | None = None) -> Dihedral:
    """phi (C-N-CA-C) or psi (N-CA-C-N) of a residue, as a `Dihedral`.

    ``residue_index`` defaults to the first residue that has both neighbours (ALA in
    ACE-ALA-NME).
    """
    if name not in ("phi", "psi"):
        raise ValueError(f"backbone dihedral must be 'phi' or 'psi', got {name!r}")
    residues = list(topology.residues())

    def atom(res, atom_name):
        for a in res.atoms():
            if a.name == atom_name:
                return a.index
        raise ValueError(f"residue {res.name}{res.id} has no atom {atom_name!r} for the {name} dihedral")

    candidates = [residue_index] if residue_index is not None else range(1, len(residues) - 1)
    for i in candidates:
        if not 0 < i < len(residues) - 1:
            raise ValueError(f"residue {i} has no neighbour on both sides (topology has {len(residues)} residues)")
        prev, res, nxt = residues[i - 1], residues[i], residues[i + 1]
        if name == "phi":
            atoms = (atom(prev, "C"), atom(res, "N"), atom(res, "CA"), atom(res, "C"))
        else:
            atoms = (atom(res, "N"), atom(res, "CA"), atom(res, "C"), atom(nxt, "N"))
        return Dihedral(atoms, name)
    raise ValueError("the topology has no residue with neighbours on both sides")


def alanine_dipeptide_pdb() -> str:
    """Path of the shipped alanine dipeptide PDB file."""
    return str(resources.files("wemap").joinpath("data", "alanine-dipeptide.pdb"))


def alanine_dipeptide(
    implicit_solvent: bool = True,
    constraints: Any = "HBonds",
    temperature: float = 300.0,
) -> MDSystem:
    """Alanine dipeptide (ACE-ALA-NME, 22 atoms) in amber14, OBC2 implicit solvent (or vacuum).

    No cutoff, hydrogen bonds constrained, 2 fs steps.
    """
    pdb = app.PDBFile(alanine_dipeptide_pdb())
    files = ["amber14-all.xml"] + (["implicit/obc2.xml"] if implicit_solvent else [])
    cons = getattr(app, constraints) if isinstance(constraints, str) else constraints
    system = app.ForceField(*files).createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=cons)
    return MDSystem(
        name="alanine dipeptide" + (" (OBC2)" if implicit_solvent else " (vacuum)"),
        system=system,
        topology=pdb.topology,
        positions=pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
        box_vectors=_box_array(system.getDefaultPeriodicBoxVectors()),
        temperature=temperature,
    )


def _box_array(vectors) -> np.ndarray:
    return np.array([list(vec.value_in_unit(unit.nanometer)) for vec in vectors], dtype=np.float64)


def water_box(
    n_atoms: int,
    cutoff_nm: float = 0.9,
    temperature: float = 300.0,
    minimize_iterations: int = 20,
    seed: int = 0,
    minimize_platform: str = "CPU",
) -> MDSystem:
    """A cubic box of ``n_atoms // 3`` TIP3P waters (amber14/tip3p.xml), PME, rigid water.

    Tiles OpenMM's pre-equilibrated water box (``Modeller.addSolvent``) into a cube a little
    too large and drops the surplus waters at random: about 10 s for 100,000 atoms. The seams
    between tiles carry strain: unrelaxed, some boxes reach NaN coordinates within a hundred
    2 fs steps (900 atoms on the CPU platform; 100,000 on CUDA), so the box is relaxed first by
    ``minimize_iterations`` steps of OpenMM's minimiser on ``minimize_platform`` (a full PME
    evaluation each: seconds at 100,000 atoms on a GPU, tens of seconds on two CPU cores; 0 skips
    it). The cutoff shrinks to fit boxes smaller than twice it.
    """
    n_waters = n_atoms // 3
    if n_waters < 30:
        raise ValueError(f"a water box needs at least 90 atoms (30 waters), asked for {n_atoms}")
    t0 = time.perf_counter()
    ff = app.ForceField("amber14/tip3p.xml")
    edge = (n_waters / _WATERS_PER_NM3) ** (1 / 3)
    for _ in range(20):
        modeller = app.Modeller(app.Topology(), [])
        modeller.addSolvent(ff, boxSize=openmm.Vec3(edge, edge, edge) * unit.nanometer, neutralize=False)
        have = modeller.topology.getNumResidues()
        if have >= n_waters:
            break
        edge *= 1.01 * (n_waters / have) ** (1 / 3)
    else:  # pragma: no cover - addSolvent always fills a large enough box
        raise RuntimeError(f"could not fit {n_waters} waters in a {edge:.2f} nm box")
    surplus = have - n_waters
    if surplus:
        rng = np.random.default_rng(seed)
        residues = list(modeller.topology.residues())
        drop = rng.choice(len(residues), size=surplus, replace=False)
        modeller.delete([residues[i] for i in drop])
    cutoff = min(cutoff_nm, 0.49 * edge)
    system = ff.createSystem(
        modeller.topology,
        nonbondedMethod=app.PME,
        nonbondedCutoff=cutoff * unit.nanometer,
        constraints=app.HBonds,
        rigidWater=True,
    )
    positions = modeller.getPositions().value_in_unit(unit.nanometer)
    positions = np.asarray([[p.x, p.y, p.z] for p in positions], dtype=np.float64)
    box = np.eye(3) * edge
    if minimize_iterations:
        ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName(minimize_platform))
        ctx.setPeriodicBoxVectors(*(openmm.Vec3(*row) for row in box))
        ctx.setPositions(positions)
        openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, minimize_iterations)
        positions = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        del ctx
    logger.info("water box: %d atoms, %.2f nm edge, cutoff %.2f nm, built in %.1f s",
                system.getNumParticles(), edge, cutoff, time.perf_counter() - t0)
    return MDSystem(
        name=f"TIP3P water box ({system.getNumParticles()} atoms)",
        system=system,
        topology=modeller.topology,
        positions=np.asarray(positions, dtype=np.float64),
        box_vectors=box,
        temperature=temperature,
    )
