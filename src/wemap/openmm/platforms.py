"""Whether this OpenMM install has a platform, checked in the manager before any worker starts.

The workers import the same OpenMM, so a platform missing here is missing there too:
`require_platform` fails once, naming the plugin's load failures and how to install the
platform, instead of in every worker. Importing this module refuses an OpenMM older than
`OPENMM_FLOOR`. docs/gpu.md is the user's guide.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import openmm

from ..errors import WemapError
from .gpus import require_visible

__all__ = [
    "OPENMM_FLOOR",
    "GPU_PLATFORMS",
    "KNOWN_PLATFORMS",
    "INSTALL_HINTS",
    "SKIP_CHECK_ENV",
    "PlatformUnavailableError",
    "available_platforms",
    "platform_problem",
    "require_platform",
]

logger = logging.getLogger(__name__)

#: the oldest OpenMM wemap runs on: the runner reads a Context's integrator state with
#: ``getState(integratorParameters=True)``, which OpenMM 8.2 added (pyproject.toml says the same)
OPENMM_FLOOR = (8, 2)

#: platforms whose contexts are placed with the ``DeviceIndex`` platform property
GPU_PLATFORMS = ("CUDA", "OpenCL", "HIP")
#: every platform OpenMM ships (CUDA, OpenCL and HIP only where their plugin loads)
KNOWN_PLATFORMS = ("Reference", "CPU", *GPU_PLATFORMS)

#: how to get each GPU platform (docs/gpu.md says which to pick)
INSTALL_HINTS = {
    "CUDA": "pip install 'wemap[openmm-cuda13]' where nvidia-smi says CUDA Version 13.x (driver 580 or newer, a "
            "Turing or newer GPU), 'wemap[openmm-cuda12]' where it says 12.x, or conda install -c conda-forge "
            "openmm cuda-version=12",
    "HIP": "pip install 'wemap[openmm-hip7]' (ROCm 7) or 'wemap[openmm-hip6]' (ROCm 6)",
    "OpenCL": "the openmm package has it, but it needs an OpenCL runtime here (libOpenCL.so.1 and a vendor's "
              "driver, such as NVIDIA's or ROCm)",
}

#: set to 1 where the workers run on other machines than the manager (`require_platform` then only warns)
SKIP_CHECK_ENV = "WEMAP_SKIP_PLATFORM_CHECK"


class PlatformUnavailableError(WemapError, ValueError):
    """An OpenMM platform this install does not have, or a name OpenMM does not know."""


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
        require_visible(name, env)
