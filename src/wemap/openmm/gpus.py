"""Which GPUs this process sees: GPU masks read as the GPU runtimes read them, the drivers' GPUs.

`parse_visible_mask` reads ``CUDA_VISIBLE_DEVICES`` (and HIP's and ROCm's masks) as the runtime
does, and the GPUs come from the drivers' files, in plain Python: the manager never initialises
CUDA or HIP itself (a process forked after that could not use the GPU). OpenCL has no mask; its
devices come from OpenMM's own list (`opencl_devices`). The `wemap.openmm` package docstring
says how ``devices`` and ``CUDA_VISIBLE_DEVICES`` combine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import openmm

from ..errors import WemapError

__all__ = [
    "NVIDIA_GPUS_DIR",
    "AMD_KFD_NODES_DIR",
    "DeviceError",
    "parse_visible_mask",
    "nvidia_gpus",
    "nvidia_gpu_count",
    "amd_gpu_count",
    "visible_devices",
    "opencl_devices",
]

#: one directory per GPU the NVIDIA driver has bound (a container sees only its own)
NVIDIA_GPUS_DIR = "/proc/driver/nvidia/gpus"
#: where the NVIDIA device files are (``nvidia0``, ``nvidia1``, ...): the count where /proc has none
NVIDIA_DEV_DIR = "/dev"
#: one directory per node of the AMD kernel driver; GPUs have a non-zero ``gpu_id``
AMD_KFD_NODES_DIR = "/sys/class/kfd/kfd/topology/nodes"


class DeviceError(WemapError, ValueError):
    """A ``devices`` list or a GPU mask that leaves a worker without a usable device."""


def parse_visible_mask(mask: str, count: int | None = None, uuids: Sequence[str] | None = None) -> list[str]:
    """The devices a ``CUDA_VISIBLE_DEVICES``-style mask leaves visible, in order, as the runtime reads it.

    Entries are ordinals (read like ``strtoul``: ``"1gpu"`` is 1) or UUIDs (``GPU-...``, a unique
    prefix is enough, resolved against ``uuids`` when given). The first invalid entry ends the
    list (``"0,-1,2"`` is device 0; ``"-1"``, ``"NoDevFiles"`` and ``""`` hide everything), as
    does an ordinal ``>= count`` or a UUID that matches no GPU; a repeated entry hides every device
    (as PyTorch's driver-free count reads CUDA's rule). ``MIG-...`` entries: CUDA enumerates one
    MIG instance per process, the first. Returns ordinals as strings, or UUIDs.
    """
    entries = [e.strip() for e in mask.split(",")]
    first = entries[0]
    if first.startswith("MIG-"):
        return [first]
    out: list[str] = []
    if first.startswith("GPU-"):
        for e in entries:
            if not e.startswith("GPU-"):
                break
            if uuids is not None:
                matches = [u for u in uuids if u.startswith(e)]
                if len(matches) != 1:  # unknown or ambiguous
                    break
                e = matches[0]
            if e in out:
                return []
            out.append(e)
        return out
    for e in entries:
        digits = re.match(r"\d+", e)
        if not digits:  # "-1", "NoDevFiles", "", a UUID after ordinals
            break
        idx = str(int(digits.group()))
        if count is not None and int(idx) >= count:
            break
        if idx in out:
            return []
        out.append(idx)
    return out


def nvidia_gpus(path: str | None = None) -> list[str] | None:
    """The NVIDIA driver's GPUs here, as their UUIDs (``""`` where unreadable), or None without the driver.

    Read from ``/proc/driver/nvidia/gpus/*/information`` (``GPU UUID:`` lines), else counted from
    the device files ``/dev/nvidia0``, ``/dev/nvidia1``, ...; CUDA_VISIBLE_DEVICES is not applied.
    """
    root = NVIDIA_GPUS_DIR if path is None else path
    try:
        buses = sorted(os.listdir(root))
    except OSError:
        buses = []
    if buses:
        uuids = []
        for bus in buses:
            try:
                with open(os.path.join(root, bus, "information")) as f:
                    found = re.search(r"^GPU UUID:\s*(\S+)", f.read(), re.MULTILINE)
            except OSError:
                found = None
            uuids.append(found.group(1) if found else "")
        return uuids
    if path is not None:
        return None
    try:
        nodes = [n for n in os.listdir(NVIDIA_DEV_DIR) if re.fullmatch(r"nvidia\d+", n)]
    except OSError:
        return None
    return [""] * len(nodes) or None


def nvidia_gpu_count(path: str | None = None) -> int | None:
    """How many NVIDIA GPUs the node's driver shows, or None where there is no driver (no mask applied)."""
    gpus = nvidia_gpus(path)
    return len(gpus) if gpus else None


def amd_gpu_count(path: str | None = None) -> int | None:
    """How many AMD GPUs the kernel driver shows (KFD topology nodes with a non-zero ``gpu_id``), or None."""
    root = AMD_KFD_NODES_DIR if path is None else path
    try:
        nodes = os.listdir(root)
    except OSError:
        return None
    count = 0
    for node in nodes:
        try:
            with open(os.path.join(root, node, "gpu_id")) as f:
                count += f.read().strip() not in ("", "0")
        except OSError:
            continue
    return count or None


def visible_count(platform: str, env: Mapping[str, str]) -> tuple[int | None, str | None]:
    """(how many GPUs ``platform`` sees in a process with ``env``, or None if unknown; the mask that decided it).

    HIP applies ``ROCR_VISIBLE_DEVICES`` first, then ``HIP_VISIBLE_DEVICES`` (or, unset, the
    ``CUDA_VISIBLE_DEVICES`` it also honours) to what is left; CUDA reads ``CUDA_VISIBLE_DEVICES``
    only. OpenCL has no mask of its own (NVIDIA's OpenCL follows ``CUDA_VISIBLE_DEVICES``): see
    `opencl_devices`.
    """
    if platform == "HIP":
        count, said = amd_gpu_count(), []
        second = "HIP_VISIBLE_DEVICES" if "HIP_VISIBLE_DEVICES" in env else "CUDA_VISIBLE_DEVICES"
        for var in ("ROCR_VISIBLE_DEVICES", second):
            if var in env:
                count = len(parse_visible_mask(env[var], count))
                said.append(f"{var}={env[var]!r}")
        return count, (" then ".join(said) or None)
    gpus = nvidia_gpus()
    count = len(gpus) if gpus else None
    mask = env.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        return count, None
    uuids = [u for u in gpus if u] if gpus else []
    known = uuids if gpus and len(uuids) == len(gpus) else None
    return len(parse_visible_mask(mask, count, known)), f"CUDA_VISIBLE_DEVICES={mask!r}"


def require_visible(platform: str, env: Mapping[str, str]) -> tuple[int | None, str | None]:
    """`visible_count`, but a mask that leaves ``platform`` no GPU is a `DeviceError` naming it."""
    count, mask = visible_count(platform, env)
    if count == 0 and mask is not None:
        raise DeviceError(f"{mask} leaves no GPU visible to OpenMM's {platform} platform (an empty mask, -1, "
                          f"NoDevFiles, a first entry that names no GPU, or a repeated entry hides them all); set it "
                          f"to the GPUs to use, such as 0,1, or unset it to use every GPU")
    return count, mask


def visible_devices(env: Mapping[str, str] | None = None, platform: str = "CUDA") -> list[int]:
    """``DeviceIndex`` values of the GPUs this process may use on ``platform``: ``[0, ..., n-1]``.

    ``n`` is what the mask leaves visible (`parse_visible_mask`; SLURM's ``CUDA_VISIBLE_DEVICES=4,5``
    gives ``[0, 1]``), or without a mask the GPUs the driver shows (Docker's ``--gpus`` exposes
    only its own). OpenCL: the devices of the one OpenCL platform with any (`opencl_devices`).
    Raises `DeviceError` when that is none, or unknown (no driver here).
    """
    env = os.environ if env is None else env
    if platform == "OpenCL":
        listing = opencl_devices()
        if not listing:
            raise DeviceError("OpenMM lists no OpenCL device here (or is older than 8.5, which cannot list them): "
                              "give devices=[...] explicitly")
        if len(listing) > 1:
            raise DeviceError(opencl_ambiguous(listing))
        return list(range(len(next(iter(listing.values())))))
    count, _ = require_visible(platform, env)
    if not count:
        where = ("/proc/driver/nvidia/gpus or /dev/nvidia0" if platform == "CUDA" else AMD_KFD_NODES_DIR)
        var = "CUDA_VISIBLE_DEVICES" if platform == "CUDA" else "HIP_VISIBLE_DEVICES"
        raise DeviceError(f"no {platform} GPU found here: {var} is not set and the driver shows none "
                          f"(nothing in {where}); set {var} or give devices=[...] explicitly")
    return list(range(count))


def opencl_devices() -> dict[int, list[str]] | None:
    """``{OpenCLPlatformIndex: [device names, in DeviceIndex order]}`` as OpenMM lists them, or None.

    None where OpenMM has no OpenCL platform or is older than 8.5 (``Platform.getDevices``).
    Lists CPU devices too (pocl, Intel's CPU runtime), as OpenMM does. Initialises OpenCL in
    this process.
    """
    try:
        platform = openmm.Platform.getPlatformByName("OpenCL")
    except Exception:
        return None
    if not hasattr(platform, "getDevices"):
        return None
    listing: dict[int, list[str]] = {}
    for device in platform.getDevices():
        d = dict(device)
        listing.setdefault(int(d.get("OpenCLPlatformIndex", 0)), []).append(d.get("DeviceName", ""))
    return listing


def opencl_ambiguous(listing: Mapping[int, Sequence[str]]) -> str:
    """The `DeviceError` text for several OpenCL platforms with devices, where one must be named."""
    said = "; ".join(f"{i}: {', '.join(names)}" for i, names in sorted(listing.items()))
    return (f"OpenCL has {len(listing)} platforms with devices here ({said}); a DeviceIndex counts inside one, so "
            f"say which with platform_properties={{'OpenCLPlatformIndex': '{min(listing)}'}}")
