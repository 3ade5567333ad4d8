"""`OpenMMRunner`: a ``Context`` built once per worker process and reused for every segment.

See the `wemap.openmm` package docstring for devices and random seeds.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openmm

from ..worker import current_worker
from . import devices as _devices
from .platforms import require_platform
from .walkers import make_walker, state_fields

__all__ = ["OpenMMRunner", "worker_seed", "TIMING_FIELDS", "WEPY_FEATURE_SHAPES", "WEPY_FEATURE_DTYPES"]

logger = logging.getLogger(__name__)

#: what each entry of a returned state's ``segment_timings`` array measures, in seconds
TIMING_FIELDS = ("context_build", "set_state", "steps", "get_state")
#: ``feature_shapes`` / ``feature_dtypes`` for wepy's ``WepyHDF5Reporter``: the fields wepy
#: does not know by itself (it has defaults for positions, velocities, box, energies, time)
WEPY_FEATURE_SHAPES = {"segment_timings": (len(TIMING_FIELDS),)}
WEPY_FEATURE_DTYPES = {"segment_timings": np.float64}


def worker_seed(seed: int, worker_idx: int) -> int:
    """A positive 31-bit seed for worker ``worker_idx``: ``seed`` itself for worker 0, distinct otherwise.

    0 stays 0 (OpenMM then picks a unique seed per Context).
    """
    if seed == 0 or worker_idx == 0:
        return seed
    mixed = int(np.random.SeedSequence([seed & 0xFFFFFFFF, worker_idx]).generate_state(1)[0]) & 0x7FFFFFFF
    return mixed or 1


@dataclass
class _LiveContext:
    """A worker's Context and what it was built from (kept alive together)."""

    context: Any
    integrator: Any
    system: Any
    platform: str
    properties: dict[str, str]
    seed: int | None
    worker_idx: int
    pristine: Any = None  # the fresh Context's time, step count, box and integrator state
    pid: int = field(default_factory=os.getpid)
    segments: int = 0
    request: tuple = ()  # the platform and properties asked for (`resolve_platform`); another request rebuilds


#: this process's contexts: (runner id, worker index) -> _LiveContext
_LIVE: dict[tuple[str, int], _LiveContext] = {}
#: contexts a forked child inherited: unusable here (their threads stayed in the parent), and
#: destroying them may hang, so they are only kept out of the way
_INHERITED: list[_LiveContext] = []
#: how often each (runner id, worker index) lost its Context here to another runner's (see `_evict_others`)
_EVICTED: dict[tuple[str, int], int] = {}


def _evict_others(runner_id: str) -> None:
    """Drop the Contexts other runners built in this process before ``runner_id`` builds its own.

    A worker keeps the Context (GPU memory, CPU threads) of the last runner it ran only: a mapper
    that runs one runner after another (equilibration, then production) would otherwise hold one
    Context per runner in every worker for good. A runner used again builds a new one.
    """
    for key in [k for k, v in _LIVE.items() if k[0] != runner_id and v.pid == os.getpid()]:
        gone = _LIVE.pop(key)
        _EVICTED[key] = _EVICTED.get(key, 0) + 1
        logger.info("worker %d (pid %d): dropped runner %s's Context (%s) for another runner's",
                    gone.worker_idx, gone.pid, key[0][:8], gone.platform)


class OpenMMRunner:
    """Runs a walker's segment on a ``Context`` that each worker builds once and then reuses.

    ``run_segment(walker, segment_length, **kwargs)`` is the segment function for any wemap
    mapper (and for wepy's ``Manager``: ``pre_cycle``/``post_cycle`` are no-ops). The walker's
    state must hold ``positions`` (nm) and ``velocities`` (nm/ps); ``box_vectors`` (nm) and
    ``time`` (ps) are used when present. The returned walker is of the kind given (a
    `wemap.Walker`, or a wepy ``Walker`` with a plain ``WalkerState``) with float64 arrays
    ``positions``, ``velocities``, ``box_vectors`` (and ``forces`` if ``get_forces``),
    ``potential_energy`` and ``kinetic_energy`` (kJ/mol), ``time`` (ps) — floats for a
    `wemap.Walker`, shape-(1,) arrays (wepy's HDF5 field shapes) for a wepy walker — and
    ``segment_timings``: seconds spent on `TIMING_FIELDS` (context build, set state, steps,
    get state); the build time is 0 on every segment but a worker's first. The energies cost
    one extra force evaluation per segment (about one step): ``get_energy=False`` leaves them
    out, for very short segments. On GPU platforms ``steps`` may return before the device
    finishes, so part of the stepping shows up as ``get_state``. Inputs are never modified
    (shared-memory mappers hand in read-only views).

    The system and integrator are kept as XML, so the runner pickles cheaply and each worker
    deserialises its own copies. See the module docstring for ``devices`` and seeds.
    """

    def __init__(
        self,
        system: openmm.System,
        integrator: openmm.Integrator,
        platform: str = "CPU",
        platform_properties: dict[str, str] | None = None,
        devices: Iterable[int | str] | None = None,
        enforce_periodic_box: bool = False,
        get_forces: bool = False,
        get_energy: bool = True,
        seed: int | None = None,
        record_timings: bool = True,
    ) -> None:
        if not isinstance(system, openmm.System):
            raise TypeError(f"system must be an openmm.System, got {type(system).__name__}")
        if not isinstance(integrator, openmm.Integrator):
            raise TypeError(f"integrator must be an openmm.Integrator, got {type(integrator).__name__}")
        require_platform(platform)
        self.runner_id = uuid.uuid4().hex
        self._system_xml = openmm.XmlSerializer.serialize(system)
        self._integrator_xml = openmm.XmlSerializer.serialize(integrator)
        # the seed `context_settings` falls back on, read here rather than from a parsed copy per Context
        self._integrator_seed = integrator.getRandomNumberSeed() if hasattr(integrator, "getRandomNumberSeed") else None
        self.n_atoms = system.getNumParticles()
        self.platform = platform
        self.platform_properties = {k: str(v) for k, v in (platform_properties or {}).items()}
        self.devices = _devices.check_devices(devices, platform)
        self.enforce_periodic_box = enforce_periodic_box
        self.get_forces = get_forces
        self.get_energy = get_energy
        self.seed = seed
        self.record_timings = record_timings

    # -- what a worker builds -----------------------------------------------------------------
    @property
    def system(self) -> openmm.System:
        """A fresh copy of the system."""
        return openmm.XmlSerializer.deserialize(self._system_xml)

    @property
    def integrator(self) -> openmm.Integrator:
        """A fresh, unbound copy of the integrator."""
        return openmm.XmlSerializer.deserialize(self._integrator_xml)

    def resolve_platform(
        self, platform: str | None = None, platform_kwargs: Mapping[str, Any] | None = None
    ) -> tuple[str | None, dict[str, str]]:
        """(platform, properties) a segment asks for: the task's over the runner's.

        wepy's GPU and CPU workers (and `wemap.openmm.OpenMMGPUWorker` / ``OpenMMCPUWorker``) pass
        ``platform`` and ``platform_kwargs`` (``{"DeviceIndex": "3"}``, ``{"Threads": "4"}``) to the
        segment function. A property the task gives wins over the runner's own
        ``platform_properties``, which apply only on the runner's platform.
        """
        if platform is not None and not isinstance(platform, str):
            raise TypeError(f"platform must be an OpenMM platform name such as 'CUDA' or 'CPU', got {platform!r}")
        name = self.platform if platform is None else platform
        props = dict(self.platform_properties) if name == self.platform else {}
        props.update({str(k): str(v) for k, v in (platform_kwargs or {}).items()})
        return name, props

    def context_settings(
        self, worker_idx: int, num_workers: int, attributes: dict | None = None,
        platform: str | None = None, properties: Mapping[str, str] | None = None,
    ) -> tuple[dict[str, str], int | None]:
        """(platform properties, integrator seed) for one worker; see `platform_properties_for`.

        ``platform`` and ``properties`` (from `resolve_platform`) default to the runner's own.
        """
        devices = self.devices if self.devices is not None else (attributes or {}).get("devices")
        platform = self.platform if platform is None else platform
        asked = self.platform_properties if properties is None else properties
        props = _devices.platform_properties_for(platform, worker_idx, num_workers, devices, asked)
        base = self._integrator_seed if self.seed is None else self.seed
        return props, (None if base is None else worker_seed(int(base), worker_idx))

    def _live_context(
        self, platform: str | None = None, platform_kwargs: Mapping[str, Any] | None = None
    ) -> tuple[_LiveContext, float]:
        worker = current_worker()
        idx, n, attrs = (worker.worker_idx, worker.num_workers, worker.attributes) if worker else (0, 1, {})
        key = (self.runner_id, idx)
        name, asked = self.resolve_platform(platform, platform_kwargs)
        request = (name, tuple(sorted(asked.items())))
        live = _LIVE.get(key)
        if live is not None and live.pid == os.getpid():
            if live.request == request:
                return live, 0.0
            logger.info("worker %d (pid %d): a task asks for platform %s %s, not %s %s: rebuilding its Context",
                        idx, live.pid, name, asked, live.platform, dict(live.request[1]))
            del _LIVE[key]
            _EVICTED[key] = _EVICTED.get(key, 0) + 1  # the new Context must not replay the old one's random stream
        elif live is not None:  # inherited through fork (a Mapper ran in the parent first)
            _INHERITED.append(_LIVE.pop(key))
        t0 = time.perf_counter()
        props, seed = self.context_settings(idx, n, attrs, platform=name, properties=asked)
        _evict_others(self.runner_id)
        # a Context rebuilt after an eviction must not replay the random stream its first one drew
        stream = idx + (_EVICTED.get(key, 0) << 16)
        if seed and stream != idx:
            seed = worker_seed(seed, stream)
        system, integrator = self.system, self.integrator
        if seed is not None and hasattr(integrator, "setRandomNumberSeed"):
            integrator.setRandomNumberSeed(seed)
        for force in system.getForces():  # barostats, Andersen thermostats: the same rule
            if hasattr(force, "setRandomNumberSeed") and force.getRandomNumberSeed() != 0:
                force.setRandomNumberSeed(worker_seed(force.getRandomNumberSeed(), stream))
        try:
            if name is None:  # OpenMM's own choice (wepy's platform=Ellipsis)
                context = openmm.Context(system, integrator)
            else:
                context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(name), props)
        except Exception as exc:
            devices = self.devices if self.devices is not None else (attrs or {}).get("devices")
            raise RuntimeError(_devices.explain_context_failure(exc, name, props, idx, n, devices)) from exc
        # the fresh Context's context parameters too: a walker's state may set them (wepy's runner)
        pristine = context.getState(integratorParameters=True, parameters=True)
        built_on = context.getPlatform().getName()
        live = _LiveContext(context, integrator, system, built_on, props, seed, idx, pristine, request=request)
        _LIVE[key] = live
        built = time.perf_counter() - t0
        logger.info(
            "worker %d (pid %d): built OpenMM Context on %s %s, seed %s, in %.3f s",
            idx, live.pid, built_on, props, seed, built,
        )
        return live, built

    def release(self) -> None:
        """Drop this runner's contexts in the calling process (workers drop theirs when they exit)."""
        for key in [k for k in _LIVE if k[0] == self.runner_id]:
            del _LIVE[key]

    def live_contexts(self) -> list[_LiveContext]:
        """This runner's contexts in the calling process (what `wemap.Mapper` built, for inspection)."""
        return [v for k, v in _LIVE.items() if k[0] == self.runner_id]

    # -- the segment --------------------------------------------------------------------------
    def run_segment(
        self,
        walker: Any,
        segment_length: int,
        *,
        platform: str | None = None,
        platform_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``segment_length`` integrator steps from ``walker``'s state; return a new walker.

        ``platform`` / ``platform_kwargs`` (passed by GPU and CPU workers) choose the worker's
        Context as `resolve_platform` says; one OpenMM cannot honour is an error naming it.
        """
        live, built = self._live_context(platform, platform_kwargs)
        t1 = time.perf_counter()
        state = walker.state
        ctx = live.context
        # Nothing of the previous walker may leak into this one: time, step count (barostat
        # schedules), the system's default box, and integrator state (Nose-Hoover chains,
        # CustomIntegrator variables) all start as in a fresh Context; the random stream goes on.
        ctx.setState(live.pristine)
        box = _optional(state, "box_vectors")
        if box is not None:
            b = np.asarray(box, dtype=np.float64).reshape(3, 3)
            ctx.setPeriodicBoxVectors(openmm.Vec3(*b[0]), openmm.Vec3(*b[1]), openmm.Vec3(*b[2]))
        ctx.setPositions(_required(state, "positions", self.n_atoms))
        ctx.setVelocities(_required(state, "velocities", self.n_atoms))
        t = _optional(state, "time")
        if t is not None:
            ctx.setTime(float(np.asarray(t).reshape(-1)[0]))
        t2 = time.perf_counter()
        live.integrator.step(int(segment_length))
        t3 = time.perf_counter()
        omm_state = ctx.getState(
            getPositions=True,
            getVelocities=True,
            getEnergy=self.get_energy,
            getForces=self.get_forces,
            enforcePeriodicBox=self.enforce_periodic_box,
        )
        fields = state_fields(omm_state, forces=self.get_forces, energy=self.get_energy)
        t4 = time.perf_counter()
        live.segments += 1
        if self.record_timings:
            fields["segment_timings"] = np.array([built, t2 - t1, t3 - t2, t4 - t3])
        return make_walker(type(walker), fields, walker.weight)

    def pre_cycle(self, **kwargs: Any) -> None:
        """No-op (wepy's ``Manager`` calls it every cycle)."""

    def post_cycle(self, **kwargs: Any) -> None:
        """No-op (wepy's ``Manager`` calls it every cycle)."""

    def __repr__(self) -> str:
        return (
            f"OpenMMRunner(n_atoms={self.n_atoms}, platform={self.platform!r}, devices={self.devices}, "
            f"id={self.runner_id[:8]})"
        )


def _optional(state: Any, key: str) -> Any:
    try:
        return state[key]
    except KeyError:
        return None


def _required(state: Any, key: str, n_atoms: int) -> np.ndarray:
    value = _optional(state, key)
    if value is None:
        raise KeyError(
            f"the walker's state has no {key!r} field, which OpenMMRunner needs (shape ({n_atoms}, 3)); "
            f"make initial walkers with wemap.openmm.walkers_from_state / walkers_from_positions"
        )
    return np.asarray(value, dtype=np.float64)
