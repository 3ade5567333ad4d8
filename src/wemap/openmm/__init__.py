"""OpenMM for wemap: a runner whose ``Context`` is built once per worker process and reused for every segment.

wepy's runner builds a new ``Context`` for every segment: milliseconds on the CPU platform
(about 2 ms for a 3,000-atom PME water box here) but typically a second or more on a GPU
(device set-up, kernel compilation). `OpenMMRunner` builds one
per worker, on that worker's device, the first time the worker runs a segment, keeps it in a
per-process cache keyed by the runner's id (which survives pickling, so it works whether a
mapper pickles the runner once per worker or once per task), and afterwards only sets
positions, velocities and box vectors, steps, and reads the state back.

`WepyOpenMMRunner` (needs wepy) is wepy's ``OpenMMRunner`` on the same per-worker Context: wepy's
constructor, wepy's ``OpenMMWalker``/``OpenMMState`` with what wepy's states hold (wrapped positions,
forces, box volume, ...), bit for bit on the Reference platform, its arrays carried through shared
memory as an `ArrayState`. `OpenMMGPUWorker` / `OpenMMCPUWorker` pass each task its platform and
``DeviceIndex`` / ``Threads`` as wepy's workers do. docs/openmm.md compares the two runners.

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

try:  # imported only to check that OpenMM is there, and to say how to install it if not
    import openmm  # noqa: F401
    from openmm import app, unit  # noqa: F401
except ImportError as exc:  # openmm is an optional extra
    raise ImportError(
        "wemap.openmm needs OpenMM, which is not installed: pip install 'wemap[openmm]' "
        "(or conda install -c conda-forge openmm)"
    ) from exc

from .array_state import ArrayState
from .devices import platform_properties_for
from .gpus import NVIDIA_GPUS_DIR, nvidia_gpu_count, visible_devices
from .platforms import GPU_PLATFORMS
from .runner import TIMING_FIELDS, WEPY_FEATURE_DTYPES, WEPY_FEATURE_SHAPES, OpenMMRunner, worker_seed
from .walkers import (
    json_topology,
    make_walker,
    state_fields,
    walkers_from_pdb,
    walkers_from_positions,
    walkers_from_simulation,
    walkers_from_state,
)
from .workers import OpenMMCPUWorker, OpenMMGPUWorker

#: the names that need wepy, imported on first use from these modules (wemap.openmm works without wepy)
_WEPY_NAMES = {
    "WepyOpenMMRunner": "wepy_runner",
    "OpenMMWalkerCodec": "wepy_walkers",
    "openmm_walker": "wepy_walkers",
    "array_walker": "wepy_walkers",
    "array_walkers": "wepy_walkers",
}

__all__ = [
    "OpenMMRunner",
    "WepyOpenMMRunner",
    "OpenMMGPUWorker",
    "OpenMMCPUWorker",
    "ArrayState",
    "openmm_walker",
    "array_walker",
    "array_walkers",
    "OpenMMWalkerCodec",
    "platform_properties_for",
    "visible_devices",
    "nvidia_gpu_count",
    "worker_seed",
    "state_fields",
    "make_walker",
    "walkers_from_state",
    "walkers_from_simulation",
    "walkers_from_positions",
    "walkers_from_pdb",
    "json_topology",
    "GPU_PLATFORMS",
    "NVIDIA_GPUS_DIR",
    "TIMING_FIELDS",
    "WEPY_FEATURE_SHAPES",
    "WEPY_FEATURE_DTYPES",
]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str):
    module = _WEPY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    try:
        mod = importlib.import_module(f"{__name__}.{module}")
    except ImportError as exc:  # an AttributeError keeps hasattr() and getattr(..., None) working
        raise AttributeError(f"wemap.openmm.{name} needs wepy: pip install 'wemap[wepy]' ({exc})") from exc
    return getattr(mod, name)
