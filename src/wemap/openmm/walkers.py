"""Walkers from OpenMM states, PDB files and simulations; the JSON topology wepy's HDF5 format stores."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import openmm
from openmm import app, unit

from ..walker import Walker

__all__ = [
    "state_fields",
    "make_walker",
    "walkers_from_state",
    "walkers_from_simulation",
    "walkers_from_positions",
    "walkers_from_pdb",
    "json_topology",
]

_NM = unit.nanometer
_NM_PER_PS = unit.nanometer / unit.picosecond
_KJ = unit.kilojoule_per_mole
_KJ_PER_NM = unit.kilojoule_per_mole / unit.nanometer
_PS = unit.picosecond

def state_fields(state: openmm.State, forces: bool = False, energy: bool = True) -> dict[str, Any]:
    """An OpenMM ``State`` (with positions, velocities, and energy unless ``energy=False``) as plain float64 fields."""
    fields: dict[str, Any] = {
        "positions": np.asarray(state.getPositions(asNumpy=True).value_in_unit(_NM), dtype=np.float64),
        "velocities": np.asarray(state.getVelocities(asNumpy=True).value_in_unit(_NM_PER_PS), dtype=np.float64),
        "box_vectors": np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(_NM), dtype=np.float64),
    }
    if energy:
        fields["potential_energy"] = float(state.getPotentialEnergy().value_in_unit(_KJ))
        fields["kinetic_energy"] = float(state.getKineticEnergy().value_in_unit(_KJ))
    fields["time"] = float(state.getTime().value_in_unit(_PS))
    if forces:
        fields["forces"] = np.asarray(state.getForces(asNumpy=True).value_in_unit(_KJ_PER_NM), dtype=np.float64)
    return fields


_SCALARS = ("potential_energy", "kinetic_energy", "time")


def _wepy_types() -> tuple[type, type] | None:
    try:
        from wepy.walker import Walker as WepyWalker
        from wepy.walker import WalkerState
    except ImportError:
        return None
    return WepyWalker, WalkerState


def make_walker(walker_type: type, fields: dict[str, Any], weight: float) -> Any:
    """A walker of ``walker_type``'s kind: a `wemap.Walker`, or (for any wepy ``Walker`` subclass)
    wepy's ``Walker`` holding a ``WalkerState``, with scalars as shape-(1,) arrays as wepy stores them."""
    if issubclass(walker_type, Walker):
        return Walker(fields, weight)
    wepy = _wepy_types()
    if wepy is not None and issubclass(walker_type, wepy[0]):
        wepy_fields = {k: (np.array([v], dtype=np.float64) if k in _SCALARS else v) for k, v in fields.items()}
        return wepy[0](wepy[1](**wepy_fields), weight)
    raise TypeError(
        f"OpenMMRunner returns wemap.Walker or wepy Walker objects; got a {walker_type.__module__}."
        f"{walker_type.__qualname__}"
    )


def walkers_from_state(state: openmm.State, n_walkers: int, walker_type: type = Walker) -> list:
    """``n_walkers`` copies of one OpenMM ``State`` (positions, velocities, energy), weights 1/n."""
    if n_walkers < 1:
        raise ValueError(f"n_walkers must be at least 1, got {n_walkers}")
    fields = state_fields(state)
    return [make_walker(walker_type, dict(fields), 1.0 / n_walkers) for _ in range(n_walkers)]


def walkers_from_simulation(simulation: app.Simulation, n_walkers: int, walker_type: type = Walker) -> list:
    """``n_walkers`` copies of an OpenMM ``Simulation``'s current state, weights 1/n."""
    state = simulation.context.getState(getPositions=True, getVelocities=True, getEnergy=True)
    return walkers_from_state(state, n_walkers, walker_type)


def walkers_from_positions(
    system: openmm.System,
    positions: Any,
    n_walkers: int,
    *,
    box_vectors: Any = None,
    temperature: float | None = 300.0,
    minimize: bool = False,
    max_iterations: int = 0,
    seed: int | None = None,
    walker_type: type = Walker,
    platform: str = "Reference",
) -> list:
    """Initial walkers from positions (nm): optionally minimised, velocities drawn at ``temperature`` (K).

    Every walker starts from the same point; they separate once dynamics run.
    """
    platform_obj = openmm.Platform.getPlatformByName(platform)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform_obj)
    if box_vectors is not None:
        b = np.asarray(box_vectors, dtype=np.float64).reshape(3, 3)
        context.setPeriodicBoxVectors(*(openmm.Vec3(*row) for row in b))
    context.setPositions(np.asarray(positions, dtype=np.float64))
    if minimize:
        openmm.LocalEnergyMinimizer.minimize(context, 10.0, max_iterations)
    if temperature:
        context.setVelocitiesToTemperature(temperature, 0 if seed is None else int(seed) or 1)
    state = context.getState(getPositions=True, getVelocities=True, getEnergy=True)
    return walkers_from_state(state, n_walkers, walker_type)


def walkers_from_pdb(
    pdb_file: str | os.PathLike,
    n_walkers: int,
    forcefield_files: Sequence[str] = ("amber14-all.xml", "implicit/obc2.xml"),
    *,
    temperature: float = 300.0,
    minimize: bool = True,
    seed: int | None = None,
    walker_type: type = Walker,
    **create_system_kwargs: Any,
) -> tuple[list, openmm.System, app.Topology]:
    """Walkers, ``System`` and ``Topology`` from a PDB file and OpenMM force-field files."""
    pdb = app.PDBFile(os.fspath(pdb_file))
    system = app.ForceField(*forcefield_files).createSystem(pdb.topology, **create_system_kwargs)
    box = pdb.topology.getPeriodicBoxVectors()
    walkers = walkers_from_positions(
        system,
        pdb.getPositions(asNumpy=True).value_in_unit(_NM),
        n_walkers,
        box_vectors=None if box is None else box.value_in_unit(_NM),
        temperature=temperature,
        minimize=minimize,
        seed=seed,
        walker_type=walker_type,
    )
    return walkers, system, pdb.topology


def json_topology(topology: app.Topology) -> str:
    """An OpenMM ``Topology`` as the JSON topology wepy's HDF5 format stores (mdtraj's HDF5 layout).

    Lets ``WepyHDF5Reporter`` record runs without mdtraj installed.
    """
    chains = []
    for chain in topology.chains():
        residues = []
        for res in chain.residues():
            try:
                seq = int(res.id)
            except (TypeError, ValueError):
                seq = res.index + 1
            residues.append(
                {
                    "index": res.index,
                    "name": res.name,
                    "resSeq": seq,
                    "segmentID": "",
                    "atoms": [
                        {"index": a.index, "name": a.name, "element": a.element.symbol if a.element else ""}
                        for a in res.atoms()
                    ],
                }
            )
        chains.append({"index": chain.index, "residues": residues})
    bonds = [[a.index, b.index] for a, b in topology.bonds()]
    return json.dumps({"chains": chains, "bonds": bonds})
