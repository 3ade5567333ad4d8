"""Which device each worker's ``Context`` goes on, and whether this install has the platform.

The manager checks what it can before any worker starts (`require_platform`, `check_devices`):
the workers import the same OpenMM, so a platform missing here is missing there too. GPU masks
are read as the GPU runtimes read them (`parse_visible_mask`), in plain Python from the
environment and the driver's files: the manager never initialises CUDA or HIP itself (a
process forked after that could not use the GPU). docs/gpu.md is the user's guide; the
`wemap.openmm` package docstring says how ``devices`` and ``CUDA_VISIBLE_DEVICES`` combine.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import openmm

from ..errors import WemapError

__all__ = [
    "OPENMM_FLOOR",
    "GPU_PLATFORMS",
    "KNOWN_PLATFORMS",
    "PROPERTY_ALIASES",
    "INSTALL_HINTS",
    "NVIDIA_GPUS_DIR",
    "AMD_KFD_NODES_DIR",
    "SKIP_CHECK_ENV",
    "PlatformUnavailableError",
    "DeviceError",
    "available_platforms",
    "platform_problem",
    "require_platform",
    "parse_visible_mask",
    "nvidia_gpus",
    "nvidia_gpu_count",
    "amd_gpu_count",
    "visible_devices",
    "opencl_devices",
    "check_devices",
    "device_load",
    "platform_properties_for",
    "gpu_compute_modes",
    "explain_context_failure",
]

logger = logging.getLogger(__name__)

#: the oldest OpenMM wemap runs on: the runner reads a Context's integrator state with
#: ``getState(integratorParameters=True)``, which OpenMM 8.2 added (pyproject.toml says the same)
OPENMM_FLOOR = (8, 2)

#: platforms whose contexts are placed with the ``DeviceIndex`` platform property
GPU_PLATFORMS = ("CUDA", "OpenCL", "HIP")
#: every platform OpenMM ships (CUDA, OpenCL and HIP only where their plugin loads)
KNOWN_PLATFORMS = ("Reference", "CPU", *GPU_PLATFORMS)

#: (platform, property wemap sets) -> OpenMM's older names for it, which it still accepts
#: (``deprecatedPropertyReplacements`` in each platform's constructor). OpenMM validates a
#: Context's properties in sorted order, so a plain name wemap added would win over the user's alias.
PROPERTY_ALIASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("CUDA", "DeviceIndex"): ("CudaDeviceIndex",),
    ("OpenCL", "DeviceIndex"): ("OpenCLDeviceIndex",),
    ("HIP", "DeviceIndex"): ("HipDeviceIndex",),
    ("CPU", "Threads"): ("CpuThreads",),
}

#: how to get each GPU platform (docs/gpu.md says which to pick)
INSTALL_HINTS = {
    "CUDA": "pip install 'wemap[openmm-cuda13]' where nvidia-smi says CUDA Version 13.x (driver 580 or newer, a "
            "Turing or newer GPU), 'wemap[openmm-cuda12]' where it says 12.x, or conda install -c conda-forge "
            "openmm cuda-version=12",
    "HIP": "pip install 'wemap[openmm-hip7]' (ROCm 7) or 'wemap[openmm-hip6]' (ROCm 6)",
    "OpenCL": "the openmm package has it, but it needs an OpenCL runtime here (libOpenCL.so.1 and a vendor's "
              "driver, such as NVIDIA's or ROCm)",
}

#: one directory per GPU the NVIDIA driver has bound (a container sees only its own)
NVIDIA_GPUS_DIR = "/proc/driver/nvidia/gpus"
#: where the NVIDIA device files are (``nvidia0``, ``nvidia1``, ...): the count where /proc has none
NVIDIA_DEV_DIR = "/dev"
#: one directory per node of the AMD kernel driver; GPUs have a non-zero ``gpu_id``
AMD_KFD_NODES_DIR = "/sys/class/kfd/kfd/topology/nodes"
#: set to 1 where the workers run on other machines than the manager (`require_platform` then only warns)
SKIP_CHECK_ENV = "WEMAP_SKIP_PLATFORM_CHECK"


class PlatformUnavailableError(WemapError, ValueError):
    """An OpenMM platform this install does not have, or a name OpenMM does not know."""


class DeviceError(WemapError, ValueError):
    """A ``devices`` list or a GPU mask that leaves a worker without a usable device."""


# -- the OpenMM install ------------------------------------------------------------------------------
def _version_tuple(text: str) -> tuple[int, ...]:
    """``"8.6.1.dev-b399af4"`` -> ``(8, 6, 1)``."""
    out = []
    for part in text.split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
    return tuple(out)


def _check_openmm_version(version: str) -> None:
    if _version_tuple(version) < OPENMM_FLOOR:
        floor = ".".join(map(str, OPENMM_FLOOR))
        raise ImportError(
            f"wemap.openmm needs OpenMM {floor} or newer, this is OpenMM {version}: its runner reads the "
            f"integrator's state with getState(integratorParameters=True), new in {floor}. "
            f"Upgrade: pip install -U 'wemap[openmm]' (or conda install -c conda-forge 'openmm>={floor}')"
        )


_check_openmm_version(getattr(openmm.version, "short_version", None) or openmm.Platform.getOpenMMVersion())


def available_platforms() -> list[str]:
    """The names of the platforms this process's OpenMM has (its plugins that loaded)."""
    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def _plugins_dir() -> str:
    return os.environ.get("OPENMM_PLUGIN_DIR") or os.path.join(openmm.version.openmm_library_path, "plugins")


def platform_problem(name: str) -> str | None:
    """Why this OpenMM install cannot run platform ``name`` (one line), or None when it can.

    Names the plugin's load failures (``Platform.getPluginLoadFailures``: a missing driver or
    library) and how to install the platform.
    """
    here = available_platforms()
    if name in here:
        return None
    if name not in KNOWN_PLATFORMS:
        close = [p for p in KNOWN_PLATFORMS if p.lower() == str(name).lower()]
        return (f"unknown OpenMM platform {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; OpenMM's platforms are {', '.join(KNOWN_PLATFORMS)}, and this install has {', '.join(here)}")
    plugin = f"/libopenmm{name.lower()}."  # the platform's own plugin, not its Amoeba/Drude/RPMD ones
    failures = [" ".join(f.split()) for f in openmm.Platform.getPluginLoadFailures() if plugin in f.lower()]
    found = (f"its plugin failed to load: {' | '.join(failures)}" if failures
             else f"no {name} plugin in {_plugins_dir()}")
    return (f"OpenMM platform {name!r} is not available here (this install has {', '.join(here)}; OpenMM "
            f"{openmm.Platform.getOpenMMVersion()}): {found}. To get it: {INSTALL_HINTS[name]}; see docs/gpu.md. "
            f"The workers import this same OpenMM; if they run on other machines that have the platform, "
            f"set {SKIP_CHECK_ENV}=1")


def require_platform(name: str, env: Mapping[str, str] | None = None) -> None:
    """Fail now, in the manager, if platform ``name`` cannot run here, rather than in every worker.

    Raises `PlatformUnavailableError` for a name OpenMM does not know or a platform whose plugin
    is missing or failed to load, and `DeviceError` for a GPU mask that hides every device. With
    ``WEMAP_SKIP_PLATFORM_CHECK=1`` (workers on other machines) a missing platform only warns.
    """
    env = os.environ if env is None else env
    problem = platform_problem(name)
    skip = env.get(SKIP_CHECK_ENV, "0") not in ("", "0")
    if problem is not None:
        if name in KNOWN_PLATFORMS and skip:
            logger.warning("%s (not checked further: %s is set)", problem.split(": ")[0], SKIP_CHECK_ENV)
            return
        raise PlatformUnavailableError(problem)
    if name in ("CUDA", "HIP") and not skip:
        count, mask = _visible(name, env)
        if mask is not None and count == 0:
            raise DeviceError(_hidden_message(name, mask))


def _check_platform(name: str) -> None:
    """What `OpenMMRunner` calls when it is made (in the manager)."""
    require_platform(name)


# -- GPU masks and drivers ---------------------------------------------------------------------------
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


def _visible(platform: str, env: Mapping[str, str]) -> tuple[int | None, str | None]:
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


def _hidden_message(platform: str, mask: str) -> str:
    return (f"{mask} leaves no GPU visible to OpenMM's {platform} platform (an empty mask, -1, NoDevFiles, "
            f"a first entry that names no GPU, or a repeated entry hides them all); set it to the GPUs to "
            f"use, such as 0,1, or unset it to use every GPU")


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
            raise DeviceError(_opencl_ambiguous(listing))
        return list(range(len(next(iter(listing.values())))))
    count, mask = _visible(platform, env)
    if count == 0 and mask is not None:
        raise DeviceError(_hidden_message(platform, mask))
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


def _opencl_ambiguous(listing: Mapping[int, Sequence[str]]) -> str:
    said = "; ".join(f"{i}: {', '.join(names)}" for i, names in sorted(listing.items()))
    return (f"OpenCL has {len(listing)} platforms with devices here ({said}); a DeviceIndex counts inside one, so "
            f"say which with platform_properties={{'OpenCLPlatformIndex': '{min(listing)}'}}")


def _opencl_target(props: Mapping[str, str]) -> tuple[str | None, int | None]:
    """(the OpenCLPlatformIndex to set, or None; how many devices that platform has, or None if unknown)."""
    listing = opencl_devices()
    if listing is None:
        return None, None
    if "OpenCLPlatformIndex" in props:
        return None, len(listing.get(int(props["OpenCLPlatformIndex"]), []))
    if len(listing) > 1:
        raise DeviceError(_opencl_ambiguous(listing))
    if not listing:
        return None, 0
    ((index, names),) = listing.items()
    return str(index), len(names)


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
        count, mask = _visible(platform, os.environ if env is None else env)
        if count == 0 and mask is not None:
            raise DeviceError(_hidden_message(platform, mask))
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


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects cpusets (SLURM, taskset)
    except AttributeError:
        return os.cpu_count() or 1


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
        props["Threads"] = str(max(1, (cores or _cores()) // max(1, num_workers)))
    return props


def _device_for(platform: str, worker_idx: int, num_workers: int, devices: Any, props: dict[str, str]) -> str | None:
    if platform == "OpenCL":
        return _opencl_device(worker_idx, num_workers, devices, props)
    if devices is not None:
        pool = check_devices(devices, platform, num_workers if worker_idx == 0 else None)
    else:
        count, mask = _visible(platform, os.environ)
        if mask is not None and count == 0:
            raise DeviceError(_hidden_message(platform, mask))
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
        count, mask = _visible(platform, os.environ)
        seen = "an unknown number of GPUs" if count is None else f"{count} GPU(s)"
        return f"{head}; DeviceIndex counts the GPUs visible to this process from 0 ({seen} here, {mask or 'no mask'})"
    if "OpenCLPlatformIndex" in text:
        listing = opencl_devices()
        return f"{head}; {_opencl_ambiguous(listing) if listing else 'give OpenCLPlatformIndex in platform_properties'}"
    return (f"{head}. Check the platform, the devices list (DeviceIndex counts inside CUDA_VISIBLE_DEVICES) "
            f"and the platform_properties.")
