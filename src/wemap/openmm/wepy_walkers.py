"""wepy's ``OpenMMWalker`` over an `ArrayState`: making such walkers, and carrying them through shared memory.

`WepyOpenMMRunner` returns wepy's own ``OpenMMWalker`` holding wepy's own ``OpenMMState``, whose
``sim_state`` is an `ArrayState` instead of an ``openmm.State``: wepy's boundary conditions,
resamplers and ``WepyHDF5Reporter`` read it through ``OpenMMState``'s accessors and get what an
``openmm.State`` gives, and `OpenMMWalkerCodec` lets `wemap.SharedMemWorkerMapper` move its arrays
(positions, velocities, forces, box vectors, and any array the ``OpenMMState`` holds besides)
through shared memory, with only a few numbers pickled. A walker over a real ``openmm.State`` (what
wepy's runner makes, or a user's initial walkers) is left to the ``pickle5`` codec, which pickles
the State as OpenMM's XML, as wepy's runner needs it: `array_walkers` converts such walkers once.

The codec is one of `wemap.codec.CodecRegistry`'s built-ins, imported only once wepy's
``wepy.runners.openmm`` is (before that no such walker can exist).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import openmm

try:
    from wepy.runners.openmm import OpenMMState, OpenMMWalker
except ImportError as exc:  # wepy is an optional extra
    raise ImportError(
        "wepy's OpenMM walkers need wepy, which is not installed: pip install 'wemap[wepy]'"
    ) from exc

from ..codec import Codec
from .array_state import ArrayState

__all__ = ["OpenMMWalkerCodec", "array_walker", "array_walkers", "openmm_walker"]

#: prefix of the array fields taken from an ``OpenMMState``'s extra data (its ``_data``)
DATA_PREFIX = "data/"


def openmm_walker(sim_state: ArrayState | openmm.State, weight: float, **data: Any) -> Any:
    """wepy's ``OpenMMWalker(OpenMMState(sim_state, **data), weight)``; an ``openmm.State`` becomes an `ArrayState`."""
    if isinstance(sim_state, openmm.State):
        sim_state = ArrayState.from_state(sim_state)
    return OpenMMWalker(OpenMMState(sim_state, **data), weight)


def array_walker(walker: Any) -> Any:
    """``walker`` (a wepy ``OpenMMWalker``) with its ``openmm.State`` as an `ArrayState`, bit for bit;
    one already over an `ArrayState` is returned as it is."""
    state = walker.state
    if not isinstance(state, OpenMMState):
        raise TypeError(f"array_walker takes wepy OpenMMWalker objects (an OpenMMState); "
                        f"got a {type(state).__name__} state")
    if isinstance(state.sim_state, ArrayState):
        return walker
    new = OpenMMState(ArrayState.from_state(state.sim_state))
    new._data = dict(state._data)
    return type(walker)(new, walker.weight)


def array_walkers(walkers: Iterable[Any]) -> list[Any]:
    """`array_walker` for each walker: initial walkers (and a boundary condition's initial state,
    ``array_walker(w).state``) whose arrays then travel through shared memory from the first cycle."""
    return [array_walker(w) for w in walkers]


class OpenMMWalkerCodec(Codec):
    """wepy's ``OpenMMWalker`` over an `ArrayState`: arrays as fields, the rest (weight, energies,
    time, step count, box volume, context parameters, non-array extra data) as metadata."""

    name = "openmm_walker"

    def accepts(self, obj: Any) -> bool:
        if type(obj) is not OpenMMWalker:
            return False
        state = obj.state
        return type(state) is OpenMMState and type(state._sim_state) is ArrayState and isinstance(state._data, dict)

    def encode(self, obj: Any) -> tuple[dict[str, np.ndarray], Any]:
        state = obj.state
        sim: ArrayState = state._sim_state
        arrays = {"box_vectors": sim.box_vectors}
        for name in ("positions", "velocities", "forces"):
            value = getattr(sim, name)
            if value is not None:
                arrays[name] = value
        rest = {}
        for key, value in state._data.items():
            if isinstance(value, np.ndarray):
                arrays[DATA_PREFIX + key] = value
            else:
                rest[key] = value
        scalars = (sim.time, sim.step_count, sim.box_volume, sim.kinetic_energy, sim.potential_energy,
                   sim.parameters, sim.parameter_derivatives)
        return arrays, (obj.weight, scalars, rest, list(state._data))

    def decode(self, arrays: dict[str, np.ndarray], meta: Any) -> Any:
        weight, scalars, rest, order = meta
        time, step_count, box_volume, kinetic, potential, parameters, derivatives = scalars
        sim = ArrayState(
            box_vectors=arrays["box_vectors"], positions=arrays.get("positions"), velocities=arrays.get("velocities"),
            forces=arrays.get("forces"), time=time, step_count=step_count, box_volume=box_volume,
            kinetic_energy=kinetic, potential_energy=potential, parameters=parameters,
            parameter_derivatives=derivatives,
        )
        state = OpenMMState(sim)
        data = {**rest, **{k[len(DATA_PREFIX):]: v for k, v in arrays.items() if k.startswith(DATA_PREFIX)}}
        state._data = {k: data[k] for k in order}
        return OpenMMWalker(state, weight)
