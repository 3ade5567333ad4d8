"""What every benchmark writes: the machine it ran on, raw figures as JSON, markdown tables.

Figures from different machines (or different runs) are not comparable, so every JSON file
carries `machine()` beside its raw numbers.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from ..pool import usable_cores

__all__ = ["machine", "cpu_model", "cgroup_room", "git_commit", "write_json", "markdown_table", "default_out_dir"]

logger = logging.getLogger(__name__)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """Short commit of the checkout this code runs from (None from an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cgroup_room(root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes this process's memory cgroup still allows (a container's --memory, a SLURM job's), or None."""
    for limit_file, usage_file in (("memory.max", "memory.current"),  # cgroup v2
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):  # v1
        try:
            with open(os.path.join(root, limit_file)) as f:
                limit = f.read().strip()
            with open(os.path.join(root, usage_file)) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:  # no limit
            return None
        return max(0, int(limit) - usage)
    return None


def machine() -> dict[str, Any]:
    """What a reader needs to compare figures taken on different machines."""
    vm = psutil.virtual_memory()
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable_cores(),
        "memory_gib": round(vm.total / 2**30, 1),
        "memory_available_gib": round(vm.available / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": _version("numpy"),
        "openmm": _version("openmm"),
        "wepy": _version("wepy"),
        "ray": _version("ray"),
        "dask": _version("dask"),
        "wemap": _version("wemap"),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as indented JSON, making the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def markdown_table(rows: Iterable[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """``columns``: (key, header, format spec); a missing value prints as '—', a string as is."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            v = row.get(key)
            if v is None:
                cells.append("—")
            elif isinstance(v, str):
                cells.append(v)
            else:
                cells.append(format(v, fmt))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_rows(benchmark: str, args: Any, title: str, rows: list[dict],
                columns: Sequence[tuple[str, str, str]]) -> Path:
    """What each of the small ``bench/`` scripts ends with: ``title`` and the table on stdout, and the
    rows with the arguments and the machine in the JSON at ``args.out``; returns its path."""
    print(f"\n{title}\n")
    print(markdown_table(rows, columns))
    path = write_json(args.out, {"benchmark": benchmark, "args": vars(args), "machine": machine(), "rows": rows})
    print(f"\nraw figures: {path}")
    return path


def default_out_dir(cwd: str | os.PathLike | None = None) -> Path:
    """``bench/results`` inside a wemap checkout, else ``./wemap-bench``."""
    here = Path(cwd or os.getcwd())
    if (here / "bench").is_dir() and (here / "src" / "wemap").is_dir():
        return here / "bench" / "results"
    return here / "wemap-bench"
