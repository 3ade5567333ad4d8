"""`ArrayState`: what an ``openmm.State`` holds, as numpy arrays, with ``openmm.State``'s getters.

An ``openmm.State`` pickles as OpenMM's XML (tens of MB for a large system, parsed back in
seconds), and only OpenMM can make one. An `ArrayState` holds the same numbers as float64
arrays and plain scalars, so a shared-memory mapper carries its arrays as raw bytes, and it
answers the getters wepy's ``OpenMMState`` calls (``getPositions(asNumpy=True)``,
``getPeriodicBoxVolume()``, ``getDataTypes()``, ...) with the same values in the same units.
`ArrayState.from_state` takes the numbers out of an ``openmm.State`` exactly, and `apply_to`
puts them into a ``Context`` as ``Context.setState`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import openmm
from openmm import unit

__all__ = ["ArrayState", "VECTOR_FIELDS"]

_S = openmm.State
#: the per-particle fields: name -> (State data type flag, unit)
VECTOR_FIELDS: dict[str, tuple[int, Any]] = {
    "positions": (_S.Positions, unit.nanometers),
    "velocities": (_S.Velocities, unit.nanometers / unit.picosecond),
    "forces": (_S.Forces, unit.kilojoules_per_mole / unit.nanometer),
}


def _readonly(arr: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    out = np.asarray(arr, dtype=np.float64)
    if out.shape != shape:
        raise ValueError(f"ArrayState: {name} has shape {out.shape}, expected {shape}")
    if out.flags.writeable:
        out = out.view()
        out.flags.writeable = False
    return out


class ArrayState:
    """An ``openmm.State`` as numpy arrays: the same getters, values and units, and no XML.

    Arrays are float64 in OpenMM's units (nm, nm/ps, kJ/mol/nm), held read-only (an
    ``openmm.State`` cannot be changed either); the getters wrap them in ``openmm.unit``
    quantities without copying. Energies, time, step count and box volume are plain numbers,
    ``parameters`` and ``parameter_derivatives`` dicts of floats. ``data_types`` is the sum of
    ``openmm.State`` data type flags the State had (``getDataTypes``); a getter for data it did
    not hold raises ``openmm.OpenMMException`` with OpenMM's own message.
    """

    __slots__ = ("positions", "velocities", "forces", "box_vectors", "time", "step_count", "box_volume",
                 "kinetic_energy", "potential_energy", "parameters", "parameter_derivatives", "data_types")

    positions: np.ndarray | None
    velocities: np.ndarray | None
    forces: np.ndarray | None
    box_vectors: np.ndarray
    time: float
    step_count: int
    box_volume: float
    kinetic_energy: float | None
    potential_energy: float | None
    parameters: dict[str, float] | None
    parameter_derivatives: dict[str, float] | None
    data_types: int

    def __init__(
        self,
        *,
        box_vectors: Any,
        positions: Any = None,
        velocities: Any = None,
        forces: Any = None,
        time: float = 0.0,
        step_count: int = 0,
        box_volume: float | None = None,
        kinetic_energy: float | None = None,
        potential_energy: float | None = None,
        parameters: Mapping[str, float] | None = None,
        parameter_derivatives: Mapping[str, float] | None = None,
    ) -> None:
        self.box_vectors = _readonly(box_vectors, (3, 3), "box_vectors")
        flags = 0
        n_atoms = None
        for name, value in (("positions", positions), ("velocities", velocities), ("forces", forces)):
            if value is not None:
                value = np.asarray(value)
                n_atoms = (value.shape[0] if value.ndim else -1) if n_atoms is None else n_atoms
                value = _readonly(value, (n_atoms, 3), name)
                flags |= VECTOR_FIELDS[name][0]
            setattr(self, name, value)
        if (kinetic_energy is None) != (potential_energy is None):
            raise ValueError("ArrayState: give both kinetic_energy and potential_energy, or neither")
        if kinetic_energy is not None:
            flags |= _S.Energy
        if parameters is not None:
            flags |= _S.Parameters
        if parameter_derivatives is not None:
            flags |= _S.ParameterDerivatives
        self.time = float(time)
        self.step_count = int(step_count)
        b = self.box_vectors
        self.box_volume = float(b[0, 0] * b[1, 1] * b[2, 2]) if box_volume is None else float(box_volume)
        self.kinetic_energy = None if kinetic_energy is None else float(kinetic_energy)
        self.potential_energy = None if potential_energy is None else float(potential_energy)
        self.parameters = None if parameters is None else {str(k): float(v) for k, v in parameters.items()}
        self.parameter_derivatives = (None if parameter_derivatives is None
                                      else {str(k): float(v) for k, v in parameter_derivatives.items()})
        self.data_types = flags

    # -- from and to OpenMM --------------------------------------------------------------------------
    @classmethod
    def from_state(cls, state: openmm.State) -> ArrayState:
        """The numbers of an ``openmm.State``, bit for bit (integrator parameters excepted: OpenMM
        does not show them)."""
        types = state.getDataTypes()
        kw: dict[str, Any] = {}
        for name, (flag, u) in VECTOR_FIELDS.items():
            if types & flag:
                kw[name] = getattr(state, "get" + name.capitalize())(asNumpy=True).value_in_unit(u)
        if types & _S.Energy:
            kw["kinetic_energy"] = state.getKineticEnergy().value_in_unit(unit.kilojoules_per_mole)
            kw["potential_energy"] = state.getPotentialEnergy().value_in_unit(unit.kilojoules_per_mole)
        if types & _S.Parameters:
            kw["parameters"] = dict(state.getParameters())
        if types & _S.ParameterDerivatives:
            kw["parameter_derivatives"] = dict(state.getEnergyParameterDerivatives())
        return cls(
            box_vectors=state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometers),
            time=state.getTime().value_in_unit(unit.picosecond),
            step_count=state.getStepCount(),
            box_volume=state.getPeriodicBoxVolume().value_in_unit(unit.nanometers**3),
            **kw,
        )

    def apply_to(self, context: openmm.Context) -> None:
        """Put this state into ``context`` as ``Context.setState`` puts an ``openmm.State``: time,
        step count, box, then positions, velocities and parameters where this state has them."""
        context.setTime(self.time)
        context.setStepCount(self.step_count)
        b = self.box_vectors
        context.setPeriodicBoxVectors(openmm.Vec3(*b[0]), openmm.Vec3(*b[1]), openmm.Vec3(*b[2]))
        if self.positions is not None:
            context.setPositions(self.positions)
        if self.velocities is not None:
            context.setVelocities(self.velocities)
        if self.parameters is not None:
            for name, value in self.parameters.items():
                context.setParameter(name, value)

    # -- openmm.State's getters ----------------------------------------------------------------------
    def getDataTypes(self) -> int:
        return self.data_types

    def _vector(self, name: str, what: str, as_numpy: bool) -> unit.Quantity:
        value = getattr(self, name)
        if value is None:
            raise openmm.OpenMMException(f"Invoked get{what}() on a State which does not contain {name}.")
        u = VECTOR_FIELDS[name][1]
        if as_numpy:
            return unit.Quantity(value, u)
        return unit.Quantity([openmm.Vec3(*row) for row in value.tolist()], u)

    def getPositions(self, asNumpy: bool = False) -> unit.Quantity:
        return self._vector("positions", "Positions", asNumpy)

    def getVelocities(self, asNumpy: bool = False) -> unit.Quantity:
        return self._vector("velocities", "Velocities", asNumpy)

    def getForces(self, asNumpy: bool = False) -> unit.Quantity:
        return self._vector("forces", "Forces", asNumpy)

    def getPeriodicBoxVectors(self, asNumpy: bool = False) -> unit.Quantity:
        if asNumpy:
            return unit.Quantity(self.box_vectors, unit.nanometers)
        return unit.Quantity([openmm.Vec3(*row) for row in self.box_vectors.tolist()], unit.nanometers)

    def getPeriodicBoxVolume(self) -> unit.Quantity:
        return unit.Quantity(self.box_volume, unit.nanometers**3)

    def _energy(self, which: str) -> unit.Quantity:
        value = getattr(self, which)
        if value is None:
            name = "".join(w.capitalize() for w in which.split("_"))
            raise openmm.OpenMMException(f"Invoked get{name}() on a State which does not contain energies.")
        return unit.Quantity(value, unit.kilojoules_per_mole)

    def getKineticEnergy(self) -> unit.Quantity:
        return self._energy("kinetic_energy")

    def getPotentialEnergy(self) -> unit.Quantity:
        return self._energy("potential_energy")

    def getTime(self) -> unit.Quantity:
        return unit.Quantity(self.time, unit.picosecond)

    def getStepCount(self) -> int:
        return self.step_count

    def getParameters(self) -> dict[str, float]:
        if self.parameters is None:
            raise openmm.OpenMMException("Invoked getParameters() on a State which does not contain parameters.")
        return dict(self.parameters)

    def getEnergyParameterDerivatives(self) -> dict[str, float]:
        if self.parameter_derivatives is None:
            raise openmm.OpenMMException(
                "Invoked getEnergyParameterDerivatives() on a State which does not contain parameter derivatives.")
        return dict(self.parameter_derivatives)

    # -- plain Python ----------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, d: dict[str, Any]) -> None:
        for k in self.__slots__:
            value = d[k]
            if isinstance(value, np.ndarray):
                value = _readonly(value, value.shape, k)
            object.__setattr__(self, k, value)

    def __repr__(self) -> str:
        n = None if self.positions is None else len(self.positions)
        return f"ArrayState(atoms={n}, time={self.time} ps, step={self.step_count}, data_types={self.data_types})"
