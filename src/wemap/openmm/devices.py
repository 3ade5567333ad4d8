"""Which device each worker's ``Context`` goes on, and what to say when a Context cannot be made.

`check_devices` checks a ``devices`` list in the manager, when the runner is made, against the
GPUs visible here (`wemap.openmm.gpus`); `platform_properties_for` gives each worker its
``DeviceIndex`` (or CPU ``Threads``); `explain_context_failure` turns OpenMM's error into what
to do. The `wemap.openmm` package docstring says how ``devices`` and ``CUDA_VISIBLE_DEVICES``
combine.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..pool import usable_cores
from .gpus import DeviceError, opencl_ambiguous, opencl_devices, require_visible, visible_count
from .platforms import GPU_PLATFORMS, platform_problem

__all__ = [
    "PROPERTY_ALIASES",
    "check_devices",
    "device_load",
    "platform_properties_for",
    "gpu_compute_modes",
    "explain_context_failure",
]

logger = logging.getLogger(__name__)

#: (platform, property wemap sets) -> OpenMM's older names for it, which it still accepts
#: (``deprecatedPropertyReplacements`` in each platform's constructor). OpenMM validates a
#: Context's properties in sorted order, so a plain name wemap added would win over the user's alias.
PROPERTY_ALIASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("CUDA", "DeviceIndex"): ("CudaDeviceIndex",),
    ("OpenCL", "DeviceIndex"): ("OpenCLDeviceIndex",),
    ("HIP", "DeviceIndex"): ("HipDeviceIndex",),
    ("CPU", "Threads"): ("CpuThreads",),
}


# -- the devices list --------------------------------------------------------------------------------
Device = int | tuple[int, ...]


def _entry(value: Any, where: str) -> Device:
    if isinstance(value, (tuple, list)):
        if not value:
            raise DeviceError(f"{where} is empty: give a GPU index")
        parts = tuple(_entry(v, where) for v in value)
        if any(isinstance(p, tuple) for p in parts) or len(set(parts)) != len(parts):
            raise DeviceError(f"{where} = {value!r}: a tuple gives one Context several distinct GPUs, such as (0, 1)")
        return parts if len(parts) > 1 else parts[0]  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, (int, str)) and not hasattr(value, "__index__"):
        raise DeviceError(f"{where} = {value!r} ({type(value).__name__}): a device is a GPU index (int), such as 0")
    if isinstance(value, str):
        text = value.strip()
        if text.upper().startswith(("GPU-", "MIG-")):
            raise DeviceError(f"{where} = {value!r} is a UUID, but OpenMM's DeviceIndex is an index: select GPUs by "
                              f"UUID with CUDA_VISIBLE_DEVICES={text} and give devices=[0, ...]")
        if re.search(r"[,\s]", text):
            raise DeviceError(f"{where} = {value!r} would spread one worker's Context over several GPUs; give one "
                              f"index per worker, devices=[0, 1], or a tuple, devices=[(0, 1)], if that is meant")
        if not re.fullmatch(r"-?\d+", text):
            raise DeviceError(f"{where} = {value!r} is not a GPU index (an int such as 0)")
        value = int(text)
    index = int(value.__index__())
    if index < 0:
        raise DeviceError(f"{where} = {index}: a GPU index is 0 or more (OpenMM reads -1 as 'pick the fastest', "
                          f"which puts every worker on one GPU)")
    return index


def check_devices(
    devices: Iterable[Any] | None,
    platform: str,
    num_workers: int | None = None,
    env: Mapping[str, str] | None = None,
) -> list[Device] | None:
    """``devices`` checked and normalised: a list of GPU indices (a tuple of indices for a Context on several GPUs).

    Refuses, with `DeviceError`: a string or other non-list, an empty list, ``bool``, negative
    indices, UUIDs (a mask's job), ``"0,1"`` strings, and on CUDA and HIP an index beyond the
    GPUs visible here (`visible_devices`). With ``num_workers``, warns when the workers do not
    share the GPUs evenly (``devices=[0, 0, 1, 1]`` and 6 workers: GPU 0 gets four). None stays None.
    """
    if devices is None:
        return None
    if isinstance(devices, (str, bytes)) or not isinstance(devices, Iterable):
        raise DeviceError(f"devices must be a list of GPU indices, one per worker in turn, such as [0, 1]; "
                          f"got {devices!r}")
    out = [_entry(d, f"devices[{i}]") for i, d in enumerate(devices)]
    if not out:
        raise DeviceError("devices is empty: give at least one GPU index (DeviceIndex, relative to "
                          "CUDA_VISIBLE_DEVICES), or None to use the visible devices in turn")
    if platform in ("CUDA", "HIP"):
        count, mask = require_visible(platform, os.environ if env is None else env)
        if count is not None:
            for i, d in enumerate(out):
                for index in d if isinstance(d, tuple) else (d,):
                    if index >= count:
                        raise DeviceError(
                            f"devices[{i}] = {index}, but {platform} sees {count} GPU(s) here, DeviceIndex 0 to "
                            f"{count - 1} ({mask or 'no mask: every GPU of the node'}); DeviceIndex counts inside "
                            f"the mask, not the node's numbering")
    if num_workers:
        load = device_load(out, num_workers)
        if len(set(load.values())) > 1:
            logger.warning("%d workers share devices=%s unevenly: %s", num_workers, out,
                           ", ".join(f"GPU {d} gets {k}" for d, k in load.items()))
    return out


def device_load(devices: Sequence[Device], num_workers: int) -> dict[str, int]:
    """How many of ``num_workers`` workers each device gets (worker ``i`` gets ``devices[i % len(devices)]``)."""
    return dict(Counter(_property(devices[i % len(devices)]) for i in range(num_workers)))


def _property(device: Device) -> str:
    return ",".join(map(str, device)) if isinstance(device, tuple) else str(device)


def _given(props: Mapping[str, str], platform: str, name: str) -> bool:
    return name in props or any(a in props for a in PROPERTY_ALIASES.get((platform, name), ()))


def platform_properties_for(
    platform: str,
    worker_idx: int,
    num_workers: int,
    devices: Iterable[Any] | None = None,
    base: Mapping[str, Any] | None = None,
    cores: int | None = None,
) -> dict[str, str]:
    """Platform properties for worker ``worker_idx`` of ``num_workers``: ``base`` plus its device.

    GPU platforms get ``DeviceIndex = devices[worker_idx % len(devices)]`` (`check_devices`),
    counted among the GPUs visible to the process. With no ``devices``: the visible GPUs in turn
    when a mask is set (`visible_devices`); else, for several workers, the GPUs the driver shows
    (OpenCL: OpenMM's list of the one OpenCL platform with devices), so more workers than GPUs
    share them; else none (OpenMM picks the fastest GPU). On OpenCL wemap also sets
    ``OpenCLPlatformIndex`` when it sets a ``DeviceIndex`` (OpenMM refuses one without the other
    where several OpenCL platforms are installed).
    CPU gets ``Threads = cores // num_workers`` (at least 1), unless ``OPENMM_CPU_THREADS`` is set.
    A property in ``base`` is never overridden, nor is its older alias (``CudaDeviceIndex``,
    ``OpenCLDeviceIndex``, ``HipDeviceIndex``, ``CpuThreads``) overridden by the plain name.
    """
    props = {k: str(v) for k, v in (base or {}).items()}
    if platform in GPU_PLATFORMS and not _given(props, platform, "DeviceIndex"):
        device = _device_for(platform, worker_idx, num_workers, devices, props)
        if device is not None:
            props["DeviceIndex"] = device
    elif platform == "CPU" and not _given(props, "CPU", "Threads") and "OPENMM_CPU_THREADS" not in os.environ:
        props["Threads"] = str(max(1, (cores or usable_cores()) // max(1, num_workers)))
    return props


def _device_for(platform: str, worker_idx: int, num_workers: int, devices: Any, props: dict[str, str]) -> str | None:
    if platform == "OpenCL":
        return _opencl_device(worker_idx, num_workers, devices, props)
    if devices is not None:
        pool = check_devices(devices, platform, num_workers if worker_idx == 0 else None)
    else:
        count, mask = require_visible(platform, os.environ)
        if not count or (mask is None and num_workers < 2):
            return None  # unknown, or one worker and no mask: OpenMM picks the fastest GPU
        pool = list(range(count))
    assert pool
    return _property(pool[worker_idx % len(pool)])


def _opencl_device(worker_idx: int, num_workers: int, devices: Any, props: dict[str, str]) -> str | None:
    if devices is None and num_workers < 2:
        return None
    pool = None if devices is None else check_devices(devices, "OpenCL", num_workers if worker_idx == 0 else None)
    index, count = _opencl_target(props)
    if pool is None:
        if not count:
            return None
        pool = list(range(count))
    elif count is not None:
        for i, d in enumerate(pool):
            if max(d if isinstance(d, tuple) else (d,)) >= count:
                raise DeviceError(f"devices[{i}] = {d}, but the OpenCL platform used has {count} device(s), "
                                  f"DeviceIndex 0 to {count - 1}")
    if index is not None:
        props["OpenCLPlatformIndex"] = index
    assert pool
    return _property(pool[worker_idx % len(pool)])


def _opencl_target(props: Mapping[str, str]) -> tuple[str | None, int | None]:
    """(the OpenCLPlatformIndex to set, or None; how many devices that platform has, or None if unknown)."""
    listing = opencl_devices()
    if listing is None:
        return None, None
    if "OpenCLPlatformIndex" in props:
        return None, len(listing.get(int(props["OpenCLPlatformIndex"]), []))
    if len(listing) > 1:
        raise DeviceError(opencl_ambiguous(listing))
    if not listing:
        return None, 0
    ((index, names),) = listing.items()
    return str(index), len(names)


# -- when a Context cannot be made -------------------------------------------------------------------
def gpu_compute_modes(timeout: float = 10.0) -> list[tuple[str, str]] | None:
    """``[(nvidia-smi index, compute mode), ...]`` for the node's NVIDIA GPUs, or None without nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,compute_mode", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    rows = [tuple(c.strip() for c in line.split(",", 1)) for line in out.stdout.splitlines() if "," in line]
    return [(r[0], r[1]) for r in rows] or None


def explain_context_failure(
    exc: BaseException,
    platform: str | None,
    props: Mapping[str, str],
    worker_idx: int,
    num_workers: int,
    devices: Sequence[Any] | None = None,
) -> str:
    """The error text for worker ``worker_idx`` failing to create its Context: OpenMM's message and what to do."""
    text = str(exc)
    head = (f"worker {worker_idx} could not create an OpenMM Context on platform {platform!r} with properties "
            f"{dict(props)}: {text}")
    if "registered Platform" in text and platform is not None:
        return f"{head}. {platform_problem(platform) or ''}"
    if "could not be loaded" in text or "OUT_OF_MEMORY" in text.upper() or "out of memory" in text:
        said = [head]
        device = props.get("DeviceIndex")
        if devices and device is not None:
            try:
                pool = [_property(_entry(d, "devices")) for d in devices]
            except DeviceError:
                pool = []
            sharing = [i for i in range(num_workers) if pool and pool[i % len(pool)] == device]
            if len(sharing) > 1:
                said.append(f"workers {', '.join(map(str, sharing))} all use DeviceIndex {device}")
        said.append("a GPU in EXCLUSIVE_PROCESS compute mode admits one process (one Context) at a time, so k "
                    "workers per GPU need the DEFAULT compute mode (nvidia-smi -c DEFAULT, as root) or MPS "
                    "(nvidia-cuda-mps-control -d), or else one worker per GPU (docs/gpu.md)")
        modes = gpu_compute_modes() if platform in ("CUDA", "OpenCL") else None
        if modes:
            said.append("nvidia-smi reports compute mode " + ", ".join(f"{m} for GPU {i}" for i, m in modes))
        said.append("the GPU may also be out of memory or held by another job (nvidia-smi lists its processes)")
        return "; ".join(said)
    if "Illegal value for DeviceIndex" in text and platform in ("CUDA", "HIP"):
        count, mask = visible_count(platform, os.environ)
        seen = "an unknown number of GPUs" if count is None else f"{count} GPU(s)"
        return f"{head}; DeviceIndex counts the GPUs visible to this process from 0 ({seen} here, {mask or 'no mask'})"
    if "OpenCLPlatformIndex" in text:
        listing = opencl_devices()
        return f"{head}; {opencl_ambiguous(listing) if listing else 'give OpenCLPlatformIndex in platform_properties'}"
    return (f"{head}. Check the platform, the devices list (DeviceIndex counts inside CUDA_VISIBLE_DEVICES) "
            f"and the platform_properties.")
