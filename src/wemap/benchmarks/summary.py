"""The text a run prints: one markdown table per workload × walkers × workers, the goals, notes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .matrix import HEADLINE_COMMAND
from .report import markdown_table

__all__ = ["matrix_tables", "goals_table", "COLUMNS"]

#: (row key, header, format); what each column means is in bench/README.md. Times are in
#: milliseconds with three decimals throughout, so that every row of a column reads alike.
COLUMNS = (
    ("atoms", "atoms", ",d"),
    ("mapper", "mapper", "s"),
    ("cycle_ms", "cycle ms (median)", ",.3f"),
    ("spread", "min–max ms", "s"),
    ("overhead_ms", "overhead ms", ",.3f"),
    ("x_floor", "overhead ÷ memcpy floor", ",.2f"),
    ("speedup", "× faster than {baseline}", ",.2f"),
    ("gb_per_s", "GB/s", ",.2f"),
    ("manager_cpu_ms", "manager CPU ms", ",.3f"),
    ("manager_cpu_pct", "manager CPU %", ",.1f"),
    ("manager_rss_mib", "manager RSS MiB", ",.0f"),
    ("worker_rss_mib", "workers RSS MiB", ",.0f"),
)
#: under a table with an in-process row
IN_PROCESS_NOTE = ("Mapper runs every segment in the calling process and moves no bytes: it has no speedup "
                   "and no GB/s (its overhead is the mapper's own bookkeeping).")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _display(row: dict[str, Any], baseline: str | None) -> dict[str, Any]:
    """``baseline``: the one baseline the table's column names, or None to name it in each cell."""
    d = dict(row)
    if row["status"] != "ok":
        d["cycle_ms"] = f"{row['status']}: {row['reason']}"
        return {k: d.get(k) for k in ("atoms", "mapper", "cycle_ms")}
    d["cycle_ms"] = _ms(row["cycle_s_median"])
    d["spread"] = f"{row['cycle_s_min'] * 1e3:,.3f}–{row['cycle_s_max'] * 1e3:,.3f}"
    d["overhead_ms"] = _ms(row["overhead_s"])
    d["manager_cpu_ms"] = _ms(row.get("manager_cpu_s_median"))
    speedup = row.get("speedup_vs_baseline")
    d["speedup"] = speedup if speedup is None or baseline else f"{speedup:,.2f} (vs {row['baseline']})"
    if row.get("manager_cpu_frac") is not None:
        d["manager_cpu_pct"] = 100 * row["manager_cpu_frac"]
    if row.get("manager_rss_peak_bytes") is not None:
        d["manager_rss_mib"] = row["manager_rss_peak_bytes"] / 2**20
        d["worker_rss_mib"] = row["worker_rss_peak_bytes"] / 2**20 if row["worker_processes"] else None
    return d


def _columns(baseline: str | None, named: bool) -> list[tuple[str, str, str]]:
    """`COLUMNS` with the speedup column named after the table's baseline."""
    if baseline:
        head = f"× faster than {baseline}"
    else:
        head = "× faster than (baseline)" if named else "× faster (no baseline measured)"
    return [(k, head if k == "speedup" else h, f) for k, h, f in COLUMNS]


def matrix_tables(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown tables, one per (workload, walkers, workers); the walker set's memcpy floor heads each."""
    floors = [r for r in rows if r["key"] == "floor"]
    cells = [r for r in rows if r["key"] != "floor"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in cells:
        groups.setdefault((r["workload"], r["walkers"], r["workers"]), []).append(r)
    parts = []
    for (workload, walkers, workers), group in sorted(groups.items(), key=lambda kv: (kv[0][0] != "noop", *kv[0][1:])):
        seg = group[0]["segment_s"]
        kinds = {"noop": "no-op segment", "fresh": "new-arrays segment (no work)",
                 "loop": "new-arrays segment, results fed back (a WE loop)"}
        what = kinds.get(workload, f"{seg * 1e3:g} ms sleep segment")
        counts = sorted({r["repeats"] for r in group if r["status"] == "ok"} or {r["repeats"] for r in group})
        reps = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        parts.append(f"### {what}, {walkers} walkers, {workers} workers (median of {reps} cycles)\n")
        shown = []
        for atoms in sorted({r["atoms"] for r in group}):
            shown += [f for f in floors if f["atoms"] == atoms and f["walkers"] == walkers]
            shown += [r for r in group if r["atoms"] == atoms]
        baselines = {r["baseline"] for r in shown if r.get("speedup_vs_baseline") is not None}
        baseline = next(iter(baselines)) if len(baselines) == 1 else None
        table = markdown_table([_display(r, baseline) for r in shown], _columns(baseline, len(baselines) > 1))
        if any(r.get("in_process", r["key"] == "Mapper") and r["status"] == "ok" for r in shown):
            table += f"\n\n{IN_PROCESS_NOTE}"
        parts.append(table + "\n")
    return "\n".join(parts)


def goals_table(goals: Sequence[dict[str, Any]]) -> str:
    """The goals with their measured values; one line when SharedMemWorkerMapper ran in none of their cells."""
    if goals and all(g["value"] is None for g in goals) and all("SharedMemWorkerMapper not" in g.get("reason", "")
                                                                  for g in goals):
        return (f"not measured: SharedMemWorkerMapper did not run in the goals' cells in this run; "
                f"`{HEADLINE_COMMAND}` measures them")
    rows = []
    for g in goals:
        verdict = "—" if g["met"] is None else ("met" if g["met"] else "not met")
        if g.get("unsettled"):
            verdict += " (unsettled: the target lies within the spread; where the medians land decides it)"
        spread = g.get("spread")
        rows.append({
            "goal": g["goal"],
            "target": f"{g['op']} {g['target']:g}",
            "value": g["value"],
            "spread": "" if not spread else (f"{spread[0]:.2f}–{spread[1]:.2f} "
                                             f"({g.get('spread_from', 'fastest and slowest cycles')})"),
            "verdict": verdict if g["met"] is not None else f"not measured ({g.get('reason')})",
        })
    return markdown_table(rows, [("goal", "goal", "s"), ("target", "target", "s"), ("value", "measured", ".2f"),
                                 ("spread", "spread (from)", "s"), ("verdict", "", "s")])


def openmm_table(section: dict[str, Any]) -> str:
    """The OpenMM section: segment-stage seconds per cycle and time inside ``integrator.step``."""
    p, system = section["params"], section["system"]
    head = (f"### OpenMM: {system['name']}, {p['walkers']} walkers x {p['steps']} steps, {p['cycles']} cycles, "
            f"platform {p['platform']}, {p['mapper']} with {p['workers']} workers\n")
    rows = []
    for r in section["rows"]:
        d = dict(r)
        d["later"] = f"{r['later_cycle_s_median']:.3f} ({r['later_cycle_s_min']:.3f}–{r['later_cycle_s_max']:.3f})"
        d["step_pct"] = 100 * r["step_fraction"]
        rows.append(d)
    table = markdown_table(rows, [
        ("runner", "runner", "s"), ("first_cycle_s", "cycle 0 s", ".3f"),
        ("later", "later cycles s, median (min–max)", "s"), ("step_pct", "in integrator.step %", ".1f"),
        ("speedup_vs_wepy", "× faster than wepy", ".2f"),
    ])
    if section.get("wepy") not in (None, "measured"):
        table += f"\n\nwepy's runner left out: {section['wepy']}"
    return head + "\n" + table
