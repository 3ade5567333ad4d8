"""Which device each worker's ``Context`` goes on, and which platforms this install has.

See the `wemap.openmm` package docstring for how ``devices`` and ``CUDA_VISIBLE_DEVICES`` combine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import openmm

__all__ = ["GPU_PLATFORMS", "NVIDIA_GPUS_DIR", "visible_devices", "nvidia_gpu_count", "platform_properties_for"]

logger = logging.getLogger(__name__)

#: platforms whose contexts are placed with the ``DeviceIndex`` property
GPU_PLATFORMS = ("CUDA", "OpenCL", "HIP")


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
