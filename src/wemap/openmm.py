"""OpenMM runner whose ``Context`` is built once per worker process and reused for every segment.

wepy's runner builds a new ``Context`` for every segment: milliseconds on the CPU platform
(about 2 ms for a 3,000-atom PME water box here) but typically a second or more on a GPU
(device set-up, kernel compilation). `OpenMMRunner` builds one
per worker, on that worker's device, the first time the worker runs a segment, keeps it in a
per-process cache keyed by the runner's id (which survives pickling, so it works whether a
mapper pickles the runner once per worker or once per task), and afterwards only sets
positions, velocities and box vectors, steps, and reads the state back.

Devices
-------
``devices=[d0, d1, ...]`` (on the runner, or ``worker_attributes={"devices": [...]}`` on the
mapper) gives worker ``i`` the device ``devices[i % len(devices)]``, passed to OpenMM as the
``DeviceIndex`` platform property on CUDA, OpenCL and HIP. Repeat an index to put k workers on
one GPU (``devices=[0, 0, 1, 1]``). On the CPU platform each worker instead gets
``Threads = cores // num_workers`` (at least 1), so the workers do not oversubscribe the cores
(unless ``OPENMM_CPU_THREADS`` or a ``Threads`` property says otherwise).

``DeviceIndex`` counts *inside* ``CUDA_VISIBLE_DEVICES`` (openmm#2613): with
``CUDA_VISIBLE_DEVICES=4,5,6,7`` the four GPUs are ``DeviceIndex`` 0-3, not 4-7. So:

* one worker per GPU on a 4-GPU node:
  ``WorkerMapper(num_workers=4)`` and ``OpenMMRunner(..., platform="CUDA", devices=[0, 1, 2, 3])``;
* on an 8-GPU node: ``num_workers=8, devices=range(8)``; two workers per GPU:
  ``num_workers=16, devices=[0, 0, 1, 1, ..., 7, 7]``;
* under SLURM (``--gres=gpu:4`` or ``--gpus-per-node=4``) SLURM sets ``CUDA_VISIBLE_DEVICES``
  to the GPUs it granted, whatever their physical numbers: use ``devices=visible_devices()``
  (``[0, 1, 2, 3]`` there), never the physical ids;
* with no ``devices`` and no mask, CUDA workers take the node's NVIDIA GPUs in turn (counted
  in ``/proc/driver/nvidia/gpus``), so 8 workers on a 4-GPU node share them two by two.

Random numbers
--------------
OpenMM reads an integrator's random number seed only when the ``Context`` (its kernels) is
created; ``setRandomNumberSeed`` afterwards just stores a number nothing reads. In OpenMM's
source: ``CpuIntegrateLangevinMiddleStepKernel::initialize`` (platforms/cpu/src/CpuKernels.cpp)
passes the seed to ``CpuRandom::initialize``, which refuses a second, different seed;
``IntegrationUtilities::initRandomNumberGenerator`` (platforms/common/src, CUDA/OpenCL/HIP)
throws "Requested two different values for the random number seed"; the Reference kernels
seed only in ``initialize``; a seed of 0 is replaced by ``osrngseed()`` there, per Context.
There is no public call to reseed a live Context (openmm#766 asks for one). Checked with
OpenMM 8.6.1: a seed set after creation changes nothing, and the generator continues from one
segment to the next. So, with a persistent Context, clones of one walker that run one after
another on the same worker draw different noise, and clones on different workers diverge
because each worker's Context gets a different seed: seed 0 (OpenMM's default) lets OpenMM
draw a unique seed per Context; an explicit seed ``s`` is kept for worker 0 and mixed with the
worker index for the others (`worker_seed`). Results repeat exactly only with one worker
(which walker runs on which worker, and in what order, is otherwise up to the scheduler), and
bit for bit only on the Reference platform (CPU sums forces in threads). A replacement for a
worker that died starts that worker's stream again.

Apart from the random stream, nothing carries over from one walker to the next on a reused
Context: each segment first restores the fresh Context's time, step count, box and integrator
state (Nose-Hoover chains, CustomIntegrator variables), then sets the walker's own.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:
    import openmm
    from openmm import app, unit
except ImportError as exc:  # openmm is an optional extra
    raise ImportError(
        "wemap.openmm needs OpenMM, which is not installed: pip install 'wemap[openmm]' "
        "(or conda install -c conda-forge openmm)"
    ) from exc

from .walker import Walker
from .worker import current_worker

__all__ = [
    "OpenMMRunner",
    "platform_properties_for",
    "visible_devices",
    "nvidia_gpu_count",
    "state_fields",
    "make_walker",
    "walkers_from_state",
    "walkers_from_simulation",
    "walkers_from_positions",
    "walkers_from_pdb",
    "json_topology",
    "GPU_PLATFORMS",
    "TIMING_FIELDS",
    "WEPY_FEATURE_SHAPES",
    "WEPY_FEATURE_DTYPES",
]

logger = logging.getLogger(__name__)

#: platforms whose contexts are placed with the ``DeviceIndex`` property
GPU_PLATFORMS = ("CUDA", "OpenCL", "HIP")
#: what each entry of a returned state's ``segment_timings`` array measures, in seconds
TIMING_FIELDS = ("context_build", "set_state", "steps", "get_state")
#: ``feature_shapes`` / ``feature_dtypes`` for wepy's ``WepyHDF5Reporter``: the fields wepy
#: does not know by itself (it has defaults for positions, velocities, box, energies, time)
WEPY_FEATURE_SHAPES = {"segment_timings": (len(TIMING_FIELDS),)}
WEPY_FEATURE_DTYPES = {"segment_timings": np.float64}

_NM = unit.nanometer
_NM_PER_PS = unit.nanometer / unit.picosecond
_KJ = unit.kilojoule_per_mole
_KJ_PER_NM = unit.kilojoule_per_mole / unit.nanometer
_PS = unit.picosecond


def visible_devices(env: dict[str, str] | None = None) -> list[int] | None:
    """``DeviceIndex`` values of the GPUs this process may use: ``[0, ..., n-1]`` for the ``n``
    entries of ``CUDA_VISIBLE_DEVICES`` (or ``HIP_VISIBLE_DEVICES``), or None when neither is set."""
    env = os.environ if env is None else env
    for var in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        mask = env.get(var)
        if mask is not None:
            return list(range(len([d for d in mask.split(",") if d.strip()])))
    return None


#: one directory per GPU the NVIDIA driver has bound, whatever CUDA_VISIBLE_DEVICES says
NVIDIA_GPUS_DIR = "/proc/driver/nvidia/gpus"


def nvidia_gpu_count(path: str | None = None) -> int | None:
    """How many NVIDIA GPUs the node's driver shows (entries of ``/proc/driver/nvidia/gpus``), or
    None where that is not there (no NVIDIA driver, not Linux): the device count without CUDA."""
    try:
        return len(os.listdir(NVIDIA_GPUS_DIR if path is None else path)) or None
    except OSError:
        return None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects cpusets (SLURM, taskset)
    except AttributeError:
        return os.cpu_count() or 1


def platform_properties_for(
    platform: str,
    worker_idx: int,
    num_workers: int,
    devices: Sequence[int | str] | None = None,
    base: dict[str, str] | None = None,
    cores: int | None = None,
) -> dict[str, str]:
    """Platform properties for worker ``worker_idx`` of ``num_workers``: ``base`` plus its device.

    GPU platforms get ``DeviceIndex = devices[worker_idx % len(devices)]``, relative to
    ``CUDA_VISIBLE_DEVICES``. With no ``devices``: the visible devices in turn when a mask is
    set; else, on CUDA, the node's NVIDIA GPUs in turn (`nvidia_gpu_count`), so more workers
    than GPUs share them rather than ask for a device that is not there; else the worker index
    (none for a single worker: OpenMM picks the fastest GPU).
    CPU gets ``Threads = cores // num_workers`` (at least 1).
    A property already in ``base`` is never overridden.
    """
    props = {k: str(v) for k, v in (base or {}).items()}
    if platform in GPU_PLATFORMS and "DeviceIndex" not in props:
        pool = list(devices) if devices is not None else visible_devices()
        if devices is not None and not pool:
            raise ValueError("devices is empty: give at least one GPU index (DeviceIndex, relative to "
                             "CUDA_VISIBLE_DEVICES), or None to use the visible devices in turn")
        if pool is None and num_workers > 1:
            gpus = nvidia_gpu_count() if platform == "CUDA" else None
            pool = list(range(gpus if gpus else num_workers))
        if pool:
            props["DeviceIndex"] = str(pool[worker_idx % len(pool)])
    elif platform == "CPU" and "Threads" not in props and "OPENMM_CPU_THREADS" not in os.environ:
        props["Threads"] = str(max(1, (cores or _cores()) // max(1, num_workers)))
    return props


def _check_platform(name: str) -> None:
    """Reject a misspelt platform now; only warn about a known one missing here (workers may have it)."""
    here = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if name in here:
        return
    if name not in ("Reference", "CPU", *GPU_PLATFORMS):
        raise ValueError(f"unknown OpenMM platform {name!r}; platforms available here: {', '.join(here)}")
    logger.warning("OpenMM platform %r is not available in this process (have %s); workers must have it", name, here)


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


#: this process's contexts: (runner id, worker index) -> _LiveContext
_LIVE: dict[tuple[str, int], _LiveContext] = {}
#: contexts a forked child inherited: unusable here (their threads stayed in the parent), and
#: destroying them may hang, so they are only kept out of the way
_INHERITED: list[_LiveContext] = []


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
        _check_platform(platform)
        self.runner_id = uuid.uuid4().hex
        self._system_xml = openmm.XmlSerializer.serialize(system)
        self._integrator_xml = openmm.XmlSerializer.serialize(integrator)
        self.n_atoms = system.getNumParticles()
        self.platform = platform
        self.platform_properties = {k: str(v) for k, v in (platform_properties or {}).items()}
        self.devices = None if devices is None else list(devices)
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

    def context_settings(
        self, worker_idx: int, num_workers: int, attributes: dict | None = None
    ) -> tuple[dict[str, str], int | None]:
        """(platform properties, integrator seed) for one worker; see `platform_properties_for`."""
        devices = self.devices if self.devices is not None else (attributes or {}).get("devices")
        props = platform_properties_for(self.platform, worker_idx, num_workers, devices, self.platform_properties)
        base = self.seed
        if base is None:
            integ = self.integrator
            base = integ.getRandomNumberSeed() if hasattr(integ, "getRandomNumberSeed") else None
        return props, (None if base is None else worker_seed(int(base), worker_idx))

    def _live_context(self) -> tuple[_LiveContext, float]:
        worker = current_worker()
        idx, n, attrs = (worker.worker_idx, worker.num_workers, worker.attributes) if worker else (0, 1, {})
        key = (self.runner_id, idx)
        live = _LIVE.get(key)
        if live is not None and live.pid == os.getpid():
            return live, 0.0
        if live is not None:  # inherited through fork (a Mapper ran in the parent first)
            _INHERITED.append(_LIVE.pop(key))
        t0 = time.perf_counter()
        props, seed = self.context_settings(idx, n, attrs)
        system, integrator = self.system, self.integrator
        if seed is not None and hasattr(integrator, "setRandomNumberSeed"):
            integrator.setRandomNumberSeed(seed)
        for force in system.getForces():  # barostats, Andersen thermostats: the same rule
            if hasattr(force, "setRandomNumberSeed") and force.getRandomNumberSeed() != 0:
                force.setRandomNumberSeed(worker_seed(force.getRandomNumberSeed(), idx))
        platform = openmm.Platform.getPlatformByName(self.platform)
        try:
            context = openmm.Context(system, integrator, platform, props)
        except Exception as exc:
            raise RuntimeError(
                f"worker {idx} could not create an OpenMM Context on platform {self.platform!r} with "
                f"properties {props}: {exc}. Check the platform, the devices list (DeviceIndex counts "
                f"inside CUDA_VISIBLE_DEVICES) and the platform_properties."
            ) from exc
        pristine = context.getState(integratorParameters=True)
        live = _LiveContext(context, integrator, system, self.platform, props, seed, idx, pristine)
        _LIVE[key] = live
        built = time.perf_counter() - t0
        logger.info(
            "worker %d (pid %d): built OpenMM Context on %s %s, seed %s, in %.3f s",
            idx, live.pid, self.platform, props, seed, built,
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
    def run_segment(self, walker: Any, segment_length: int, **kwargs: Any) -> Any:
        """Run ``segment_length`` integrator steps from ``walker``'s state; return a new walker."""
        live, built = self._live_context()
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


# -- states and walkers ----------------------------------------------------------------------
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

