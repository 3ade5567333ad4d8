"""``wemap bench``: how fast each mapper moves walkers, beside the peers a user would pick instead.

Times wemap's mappers and their peers (wepy's ``WorkerMapper``, Ray actors over Ray's object
store, ``concurrent.futures.ProcessPoolExecutor``) over a matrix of atoms per walker × walkers
× workers, for a no-op segment (pure transport) and a fixed-duration one, beside the memcpy
floor measured in the same run; optionally wemap's vs wepy's OpenMM runner on a water box.
Writes a markdown table, a JSON file of every raw figure with the machine's description, and
a PNG. It lives in the package (not only in ``bench/``) so it runs from an installed wheel::

    wemap bench --quick
    python -m wemap.benchmarks --atoms 1M --walkers 8 --workers 2 --workload noop --no-openmm

Modules: `cli` (options, the run), `matrix` (cells, sizing, ratios, goals), `measure` (one
cell: wall, CPU, peak RSS, memcpy floor), `contenders` and `peers` (the mappers), `workloads`
(segment functions and walkers), `openmm_section`, `summary` (tables), `report` (machine,
JSON), `plot` (PNG).
"""

from __future__ import annotations

from .cli import add_bench_parser, main, run_bench

__all__ = ["add_bench_parser", "run_bench", "main"]
