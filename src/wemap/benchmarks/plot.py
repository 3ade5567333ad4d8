"""The PNG of a run: overhead against atoms per walker, one line per mapper, log–log.

Panels: (1) no-op segment overhead (pure transport) with the memcpy floor dashed;
(2) overhead of the fixed-duration (sleep) segment; (3) the manager's CPU while it waits,
as % of one core. All for one walkers × workers combination (the headline one when present).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_matrix", "pick_combo"]

logger = logging.getLogger(__name__)


def pick_combo(rows: Sequence[dict[str, Any]]) -> tuple[int, int] | None:
    """(walkers, workers) to plot: 8 × 2 when measured, else the fewest walkers on the most workers."""
    combos = {(r["walkers"], r["workers"]) for r in rows if r["status"] == "ok" and r["key"] != "floor"}
    if not combos:
        return None
    if (8, 2) in combos:
        return 8, 2
    walkers = min(w for w, _ in combos)
    return walkers, max(k for w, k in combos if w == walkers)


def _series(rows: Sequence[dict[str, Any]], value: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        v = r.get(value)
        if r["status"] == "ok" and v is not None and v > 0:
            out.setdefault(r["mapper"], []).append((r["atoms"], v))
    return {k: sorted(v) for k, v in out.items()}


def plot_matrix(rows: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Write the figure to ``path``; None (and a log line) when there is nothing to plot or no matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot (pip install 'wemap[bench]')")
        return None
    combo = pick_combo(rows)
    if combo is None:
        return None
    walkers, workers = combo
    sel = [r for r in rows if r["walkers"] == walkers and (r["workers"] == workers or r["key"] == "floor")]
    noop = [r for r in sel if r["workload"] == "noop"]
    sleep = [r for r in sel if r["workload"] == "sleep" and r["key"] != "floor"]
    fresh = [r for r in sel if r["workload"] == "fresh" or r["key"] == "floor"]
    panels = [("no-op segment: overhead per cycle", noop, "overhead_s", "overhead s (cycle − ideal)")]
    if any(r["key"] != "floor" for r in fresh):
        panels.append(("new-arrays segment: overhead per cycle", fresh, "overhead_s", "overhead s (cycle − ideal)"))
    loop = [r for r in sel if r["workload"] == "loop" or r["key"] == "floor"]
    if any(r["key"] != "floor" for r in loop):
        panels.append(("WE loop (results fed back): overhead per cycle", loop, "overhead_s",
                       "overhead s (cycle − ideal)"))
    if sleep:
        ms = sleep[0]["segment_s"] * 1e3
        panels.append((f"{ms:g} ms segment: overhead per cycle", sleep, "overhead_s", "overhead s (cycle − ideal)"))
        panels.append((f"{ms:g} ms segment: manager CPU while waiting", sleep, "manager_cpu_frac",
                       "manager CPU, fraction of a core"))
    else:
        panels.append(("no-op segment: manager CPU", [r for r in noop if r["key"] != "floor"], "manager_cpu_frac",
                       "manager CPU, fraction of a core"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8), squeeze=False)
    for ax, (title, group, value, ylabel) in zip(axes[0], panels):
        for mapper, pts in _series(group, value).items():
            xs, ys = zip(*pts)
            style = {"color": "black", "linestyle": "--"} if mapper == "memcpy floor" else {}
            ax.plot(xs, ys, marker="o", label=mapper, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("atoms per walker")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.suptitle(f"wemap bench: {walkers} walkers, {workers} workers", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
