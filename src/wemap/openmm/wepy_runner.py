"""`WepyOpenMMRunner`: wepy's ``OpenMMRunner`` (same constructor, same states, same numbers) on one Context per worker.

wepy's runner builds a ``Simulation`` (a new ``Context``) for every segment, sets the walker's
``openmm.State`` on it, steps, and wraps ``context.getState(**GET_STATE_KWARG_DEFAULTS)`` (positions
wrapped into the box, velocities, forces, energies, context parameters) in an ``OpenMMState``.
This runner does the same on the Context its worker built once (`OpenMMRunner`'s machinery:
the fresh Context's state is restored before every walker), and returns wepy's own
``OpenMMWalker`` / ``OpenMMState`` over an `ArrayState`, so the walkers travel through shared
memory. On the Reference platform with deterministic dynamics it gives wepy's numbers bit for bit.
See docs/openmm.md.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import openmm

try:
    from wepy.runners.openmm import GET_STATE_KWARG_DEFAULTS, OpenMMState, OpenMMWalker
except ImportError as exc:  # wepy is an optional extra
    raise ImportError(
        "WepyOpenMMRunner returns wepy's OpenMMWalker objects and needs wepy, which is not installed: "
        "pip install 'wemap[wepy]' (or use wemap.openmm.OpenMMRunner, which does not)"
    ) from exc

from .array_state import ArrayState
from .runner import OpenMMRunner

__all__ = ["WepyOpenMMRunner", "SIMULATION_STEP_CHUNK"]

logger = logging.getLogger(__name__)

#: ``openmm.app.Simulation.step`` calls ``integrator.step`` this many steps at a time; so does this runner
SIMULATION_STEP_CHUNK = 10
_GET_STATE_NAMES = frozenset(inspect.signature(openmm.Context.getState).parameters) - {"self"}
_INTEGRATOR_PARAMETERS = ("getIntegratorParameters", "integratorParameters")


def _get_state_kwargs(base: Mapping[str, Any], extra: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """``base`` updated with ``extra``, checked against ``Context.getState``'s keywords."""
    out = dict(base)
    for key, value in (extra or {}).items():
        if key == "enforce_box":  # wepy's docstring lets get_state_kwargs set enforce_box
            key = "enforcePeriodicBox"
        if key not in _GET_STATE_NAMES:
            raise ValueError(f"{where}: {key!r} is not a keyword of openmm.Context.getState "
                             f"(those are {', '.join(sorted(_GET_STATE_NAMES))})")
        out[key] = value
    for key in _INTEGRATOR_PARAMETERS:
        if out.get(key):
            raise ValueError(f"{where}: {key}=True is not supported: an integrator's internal state is opaque "
                             f"to Python, so it cannot travel with the walker as arrays")
    return out


def _step_as_simulation(integrator: openmm.Integrator, steps: int) -> None:
    """``steps`` steps as ``Simulation.step`` takes them (no reporters): ten at a time, then the rest."""
    if int(steps) != steps:
        raise TypeError(f"Expected an integer for steps, got {type(steps)}")
    to_go = int(steps)
    while to_go > SIMULATION_STEP_CHUNK:
        integrator.step(SIMULATION_STEP_CHUNK)
        to_go -= SIMULATION_STEP_CHUNK
    integrator.step(to_go)


class WepyOpenMMRunner(OpenMMRunner):
    """wepy's ``OpenMMRunner``, with one ``Context`` per worker kept across segments.

    Takes wepy's arguments (``system, topology, integrator, platform, platform_kwargs,
    enforce_box, get_state_kwargs``) and returns what wepy's runner returns: an ``OpenMMWalker``
    whose ``OpenMMState`` holds what ``Context.getState(**get_state_kwargs)`` gives, over wepy's
    defaults (``GET_STATE_KWARG_DEFAULTS``: positions wrapped into the box, velocities, forces,
    energies, context parameters), so ``state["box_volume"]``, ``state["forces"]`` and the
    ``WepyHDF5Reporter`` datasets are wepy's. Its ``sim_state`` is an `ArrayState`, which answers
    the same getters as an ``openmm.State``; input walkers may hold either.

    Differences from wepy 1.2's runner, each one where wepy's drops a request or fails:

    - ``platform_kwargs`` a task gives (wepy's ``OpenMMCPUWorker`` passes ``{"Threads": ...}`` with
      no platform) are applied, over the runner's own when the platform is the runner's; a
      property the platform does not have is an error naming it, not a warning;
    - ``enforce_box`` has no effect, as in wepy 1.2, whose ``getState`` call takes
      ``enforcePeriodicBox`` from ``get_state_kwargs`` (True by default): a value that disagrees
      warns, naming ``get_state_kwargs={"enforcePeriodicBox": ...}``, which does take effect;
    - ``pre_cycle(platform=...)`` (wepy's ``runner_opts``) is refused: wemap's worker processes
      keep the runner they were started with, so a platform set on the manager's copy would not
      reach them;
    - the integrator's random seed follows `OpenMMRunner`'s rule (see `wemap.openmm`; wepy sets 0,
      a fresh seed per segment), and like `OpenMMRunner` a worker's Context gets ``DeviceIndex``
      / ``Threads`` defaults (``devices``, cores per worker) unless the task or runner sets them.

    ``seed`` and ``devices`` are `OpenMMRunner`'s, keyword-only.
    """

    def __init__(
        self,
        system: openmm.System,
        topology: Any,
        integrator: openmm.Integrator,
        platform: str | None = None,
        platform_kwargs: Mapping[str, Any] | None = None,
        enforce_box: bool | None = None,
        get_state_kwargs: Mapping[str, Any] | None = None,
        *,
        seed: int | None = None,
        devices: Iterable[int] | None = None,
    ) -> None:
        if not isinstance(platform, str):
            raise TypeError(
                f"platform must be an OpenMM platform name such as 'CUDA', 'CPU' or 'Reference' (wepy's "
                f"OpenMMRunner asserts the same), got {platform!r}"
            )
        super().__init__(system, integrator, platform=platform, platform_properties=dict(platform_kwargs or {}),
                         devices=devices, seed=seed, record_timings=False)
        self.topology = topology
        self.getState_kwargs = _get_state_kwargs(dict(GET_STATE_KWARG_DEFAULTS), get_state_kwargs,
                                                 "WepyOpenMMRunner get_state_kwargs")
        wrap = bool(self.getState_kwargs.get("enforcePeriodicBox", False))
        if enforce_box is not None and bool(enforce_box) != wrap:
            warnings.warn(
                f"enforce_box={enforce_box!r} has no effect, as in wepy 1.2's OpenMMRunner: positions "
                f"{'are' if wrap else 'are not'} wrapped into the box (get_state_kwargs enforcePeriodicBox="
                f"{wrap}); pass get_state_kwargs={{'enforcePeriodicBox': {bool(enforce_box)}}} to change that",
                UserWarning, stacklevel=2,
            )
        self.enforce_box = wrap
        self.enforce_periodic_box = wrap
        self.get_forces = bool(self.getState_kwargs.get("getForces") or self.getState_kwargs.get("forces"))
        self.get_energy = bool(self.getState_kwargs.get("getEnergy") or self.getState_kwargs.get("energy"))
        #: wepy's per-segment split times of this cycle, kept only by the runner of the process that made
        #: it (wepy's Manager reads that one; a worker's copy would only grow)
        self._last_cycle_segments_split_times: list[dict[str, float]] = []
        self._made_in = os.getpid()

    # wepy's attribute names
    @property
    def platform_name(self) -> str:
        return self.platform

    @property
    def platform_kwargs(self) -> dict[str, str]:
        return self.platform_properties

    def resolve_platform(
        self, platform: Any = None, platform_kwargs: Mapping[str, Any] | None = None
    ) -> tuple[str | None, dict[str, str]]:
        """As `OpenMMRunner.resolve_platform`; ``platform=...`` (Ellipsis) is wepy's "OpenMM's own choice"."""
        if platform is Ellipsis:
            if platform_kwargs:
                raise ValueError(f"platform_kwargs {dict(platform_kwargs)} were given with platform=... (OpenMM's "
                                 f"own choice of platform): name the platform they are for")
            return None, {}
        return super().resolve_platform(platform, platform_kwargs)

    def pre_cycle(self, platform: Any = None, platform_kwargs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """Start a cycle's split times; a platform here is refused (see the class docstring)."""
        if platform is not None or platform_kwargs is not None:
            raise ValueError(
                f"pre_cycle(platform={platform!r}, platform_kwargs={platform_kwargs!r}): wemap's worker processes "
                f"keep the runner they were started with, so a platform set here would not reach them. Give it "
                f"to the runner (platform=, platform_kwargs=) or per worker (worker_type=OpenMMGPUWorker with "
                f"the mapper's platform= and device_ids=)"
            )
        self._last_cycle_segments_split_times = []

    def post_cycle(self, **kwargs: Any) -> None:
        """Nothing to undo (wepy's ``Manager`` calls it every cycle)."""

    def run_segment(
        self,
        walker: Any,
        segment_length: int,
        getState_kwargs: Mapping[str, Any] | None = None,
        platform: Any = None,
        platform_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``segment_length`` steps from ``walker.state.sim_state``; return a new ``OpenMMWalker``.

        ``getState_kwargs`` updates the runner's for this segment; ``platform`` / ``platform_kwargs``
        (from the worker) choose the Context as `resolve_platform` says.
        """
        start = time.time()
        get_kwargs = (self.getState_kwargs if getState_kwargs is None
                      else _get_state_kwargs(self.getState_kwargs, getState_kwargs, "run_segment getState_kwargs"))
        sim_state = _sim_state(walker, self.n_atoms)
        live, _ = self._live_context(platform, platform_kwargs)
        ctx = live.context
        # as on wepy's fresh Context: nothing of the previous walker stays (velocities a State
        # lacks are zero there, so they are zeroed here); the random stream goes on
        ctx.setState(live.pristine)
        if isinstance(sim_state, ArrayState):
            if sim_state.velocities is None:
                ctx.setVelocities(np.zeros((self.n_atoms, 3)))
            sim_state.apply_to(ctx)
        else:
            if not sim_state.getDataTypes() & openmm.State.Velocities:
                ctx.setVelocities(np.zeros((self.n_atoms, 3)))
            ctx.setState(sim_state)
        gen_sim = time.time()
        _step_as_simulation(live.integrator, segment_length)
        steps = time.time()
        new_state = OpenMMState(ArrayState.from_state(ctx.getState(**get_kwargs)))
        end = time.time()
        live.segments += 1
        if os.getpid() == self._made_in:
            self._last_cycle_segments_split_times.append({
                "gen_sim_time": gen_sim - start, "steps_time": steps - gen_sim,
                "get_state_time": end - steps, "run_segment_time": end - start,
            })
        return OpenMMWalker(new_state, walker.weight)

    def __repr__(self) -> str:
        return f"WepyOpenMMRunner(n_atoms={self.n_atoms}, platform={self.platform!r}, id={self.runner_id[:8]})"


def _sim_state(walker: Any, n_atoms: int) -> ArrayState | openmm.State:
    """The walker's ``openmm.State`` or `ArrayState`, with positions for ``n_atoms`` atoms."""
    sim_state = getattr(getattr(walker, "state", None), "sim_state", None)
    if not isinstance(sim_state, (ArrayState, openmm.State)):
        raise TypeError(
            f"WepyOpenMMRunner runs walkers whose state is wepy's OpenMMState (its sim_state an openmm.State "
            f"or a wemap.openmm.ArrayState); got a {type(getattr(walker, 'state', None)).__name__} state. "
            f"For walkers with plain position and velocity arrays use wemap.openmm.OpenMMRunner"
        )
    if not sim_state.getDataTypes() & openmm.State.Positions:
        raise ValueError("the walker's sim_state has no positions (get it with getState(getPositions=True))")
    n = sim_state.getPositions(asNumpy=True).shape[0]
    if n != n_atoms:
        raise ValueError(f"the walker's sim_state has {n} atoms, the runner's system {n_atoms}")
    return sim_state
