"""``wemap bench`` at tiny sizes: it runs, writes table, JSON and PNG, and every ratio in the JSON
is the quotient of figures in the same JSON. No timing is asserted (benchmarks are not tests)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

from wemap.benchmarks import add_bench_parser, main, run_bench
from wemap.benchmarks.cli import parse_atoms
from wemap.benchmarks.contenders import discover, select
from wemap.benchmarks.matrix import HEADLINE, HEADLINE_COMMAND, PER_TASK_CELL, goals, goals_cell, per_task_goal
from wemap.benchmarks.measure import CellTimeout, deadline, enough

# the thread method: the bench's own --cell-timeout uses SIGALRM, which would cancel the signal method
pytestmark = pytest.mark.timeout(180, method="thread")

TINY = [
    "--atoms", "1000", "--walkers", "2", "--workers", "1", "--repeats", "2", "--warmup", "1",
    "--workload", "noop", "sleep", "fresh", "loop", "--sleep-ms", "5", "--no-openmm", "--no-progress",
    "--mappers", "Mapper", "WorkerMapper", "SharedMemWorkerMapper", "processpool",
]
ROW_KEYS = {
    "mapper", "key", "kind", "workload", "segment_s", "atoms", "walkers", "workers", "processes",
    "bytes_per_walker", "bytes_per_cycle", "repeats", "warmup", "status", "reason",
    "estimate_ram_bytes", "estimate_shm_bytes",
}
MEASURED_KEYS = {
    "cycle_s", "cycle_s_median", "cycle_s_min", "cycle_s_max", "ideal_s", "overhead_s", "gb_per_s",
    "floor_s", "x_floor",
}
MAPPER_KEYS = {
    "manager_cpu_s", "manager_cpu_s_median", "manager_cpu_frac", "worker_cpu_s_per_cycle",
    "manager_rss_peak_bytes", "worker_rss_peak_bytes", "rss_method", "baseline", "baseline_cycle_s",
    "speedup_vs_baseline", "leftover_processes",
}
MACHINE_KEYS = {"cpu", "logical_cores", "memory_gib", "python", "numpy", "openmm", "platform", "date"}


def _run(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    mappers = list(TINY)
    if any(c.key == "wepy" and c.available for c in discover()):
        mappers.append("wepy")
    code, text = _run(mappers + ["--out", str(out), "--name", "tiny"])
    data = json.loads((out / "tiny.json").read_text())
    return code, text, data, out


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


@pytest.mark.slow
def test_writes_table_json_and_png(tiny_run):
    code, text, data, out = tiny_run
    assert code == 0
    assert "| atoms | mapper | cycle ms (median)" in text
    assert "memcpy floor" in text and "SharedMemWorkerMapper" in text
    png = out / "tiny.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = out / "tiny.md"
    assert data["files"] == {"json": str(out / "tiny.json"), "png": str(png), "md": str(md)}
    assert md.read_text().strip() in text, "the .md file holds the report printed"


def test_every_ratio_column_names_its_baseline_and_numbers_read_alike(tiny_run):
    _, text, data, _ = tiny_run
    headers = [line for line in text.splitlines() if line.startswith("| atoms |")]
    assert headers
    baseline = "wepy WorkerMapper" if any(r["key"] == "wepy" for r in data["rows"]) else "WorkerMapper"
    for h in headers:
        assert f"| overhead ÷ memcpy floor | × faster than {baseline} |" in h
        assert "baseline" not in h
    cells = [c.strip() for line in text.splitlines() if line.startswith("| ") and not line.startswith("| atoms")
             for c in line.strip("|").split("|")]
    assert not [c for c in cells if re.search(r"\de[-+]\d", c)], "no exponent notation in the tables"
    mapper_rows = [line for line in text.splitlines() if line.startswith("| 1,000 | Mapper |")]
    assert mapper_rows and all("| — | — |" in line for line in mapper_rows), "Mapper: no speedup, no GB/s"
    assert "moves no bytes" in text


def test_json_schema(tiny_run):
    _, _, data, _ = tiny_run
    assert data["benchmark"] == "wemap bench" and data["schema"] == 2 and data["complete"] is True
    assert MACHINE_KEYS <= data["machine"].keys()
    assert {c["key"] for c in data["contenders"]} >= {"Mapper", "WorkerMapper", "SharedMemWorkerMapper", "processpool"}
    rows = data["rows"]
    assert {r["workload"] for r in rows} == {"noop", "sleep", "fresh", "loop"}
    assert sum(r["key"] == "floor" for r in rows) == 1
    for r in rows:
        assert ROW_KEYS <= r.keys(), ROW_KEYS - r.keys()
        assert r["status"] == "ok", r
        assert MEASURED_KEYS <= r.keys(), MEASURED_KEYS - r.keys()
        assert len(r["cycle_s"]) == r["repeats"]
        if r["key"] != "floor":
            assert MAPPER_KEYS <= r.keys(), MAPPER_KEYS - r.keys()
            assert r["leftover_processes"] == 0
    assert len(data["goals"]) == 4  # three ratios in the headline cell, the per-task overhead at 10k atoms
    assert all(r["repeats"] >= 2 for r in rows), "--repeats is the least a cell times"


def test_every_ratio_is_a_quotient_of_figures_in_the_same_json(tiny_run):
    _, _, data, _ = tiny_run
    rows = data["rows"]
    floor = next(r for r in rows if r["key"] == "floor")
    for r in rows:
        assert close(r["cycle_s_median"], statistics.median(r["cycle_s"]))
        assert close(r["ideal_s"], math.ceil(r["walkers"] / r["processes"]) * r["segment_s"])
        assert close(r["overhead_s"], r["cycle_s_median"] - r["ideal_s"])
        assert r["floor_s"] == floor["cycle_s_median"]
        assert close(r["x_floor"], r["overhead_s"] / r["floor_s"])
        if r["gb_per_s"] is not None:
            assert close(r["gb_per_s"], 2 * r["bytes_per_cycle"] / r["cycle_s_median"] / 1e9)
        if r["segment_s"] > 0:
            assert r["gb_per_s"] is None, "a cycle that is mostly sleep has no bandwidth figure"
        if r["key"] == "floor":
            continue
        assert close(r["manager_cpu_frac"], r["manager_cpu_s_median"] / r["cycle_s_median"])
        if r["key"] == "Mapper":  # in the calling process: it moves nothing, so it is faster than nothing
            assert r["in_process"] and r["baseline"] is None and r["speedup_vs_baseline"] is None
            continue
        base = next(b for b in rows if b["mapper"] == r["baseline"] and b["workload"] == r["workload"]
                    and b["atoms"] == r["atoms"] and b["walkers"] == r["walkers"] and b["workers"] == r["workers"])
        assert base["key"] in ("wepy", "WorkerMapper")
        assert r["baseline_cycle_s"] == base["cycle_s_median"]
        assert close(r["speedup_vs_baseline"], r["baseline_cycle_s"] / r["cycle_s_median"])
    assert next(r for r in rows if r["key"] == "Mapper")["gb_per_s"] is None  # moves no bytes


def test_goals_are_quotients_of_the_rows(tiny_run):
    _, _, data, _ = tiny_run
    rows = data["rows"]
    cell = {"workload": "noop", "atoms": 1000, "walkers": 2, "workers": 1}
    by_key = {r["key"]: r for r in rows if r["workload"] == "noop"}
    for g in goals(rows, cell):
        if g["value"] is None:
            assert g["compared_with"] not in by_key or g["compared_with"] == "ray"
            continue
        assert close(g["value"], g["numerator_s"] / g["denominator_s"])
        shm = by_key["SharedMemWorkerMapper"]["cycle_s_median"]
        other = by_key[g["compared_with"]]["cycle_s_median"]
        # speedups divide the other's cycle by ours; the floor goal divides ours by the floor
        want = (other, shm) if g["op"] == ">=" else (shm, other)
        assert (g["numerator_s"], g["denominator_s"]) == want
        assert g["met"] == (g["value"] >= g["target"] if g["op"] == ">=" else g["value"] <= g["target"])
        top, bottom = (by_key[g["compared_with"]], by_key["SharedMemWorkerMapper"])
        if g["op"] == "<=":
            top, bottom = bottom, top
        low, high = g["spread"]
        assert close(low, top["cycle_s_min"] / bottom["cycle_s_max"])
        assert close(high, top["cycle_s_max"] / bottom["cycle_s_min"])
        assert low <= g["value"] <= high
        assert g["unsettled"] == (low < g["target"] < high)


def test_goals_are_measured_in_the_largest_cell_when_the_headline_cell_did_not_run():
    def row(atoms, key="SharedMemWorkerMapper", walkers=8, workers=2, status="ok"):
        return {"status": status, "key": key, "workload": "noop", "atoms": atoms, "walkers": walkers,
                "workers": workers}

    assert goals_cell([row(10_000), row(100_000), row(1_000_000, walkers=48)])["atoms"] == 100_000
    assert goals_cell([row(100_000), row(1_000_000)]) == HEADLINE
    assert goals_cell([row(100_000, key="wepy"), row(10_000, status="failed")]) == HEADLINE, "not measured at all"


@pytest.mark.timeout(120, method="thread")
def test_a_quick_run_measures_the_goals_and_says_where(tmp_path):
    code, text = _run(["--quick", "--mappers", "SharedMemWorkerMapper", "WorkerMapper", "--repeats", "2",
                       "--min-time", "0", "--workload", "noop", "--atoms", "10k", "--walkers", "8", "--workers", "2",
                       "--no-plot", "--out", str(tmp_path), "--name", "q"])
    assert code == 0
    data = json.loads((tmp_path / "q.json").read_text())
    assert data["goals_cell"]["atoms"] == 10_000
    floor_goal = next(g for g in data["goals"] if g["compared_with"] == "floor" and "per-task" not in g["goal"])
    assert floor_goal["value"] is not None and floor_goal["cell"]["atoms"] == 10_000
    assert f"stated at 1,000,000, where `{HEADLINE_COMMAND}` measures them" in text


def test_a_mapper_that_is_not_installed_says_why_once():
    code = ("import sys; sys.modules['dask'] = None; from wemap.benchmarks.contenders import discover; "
            "print(next(c.reason for c in discover() if c.key == 'DaskMapper'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    reason = out.stdout.strip()
    assert reason.startswith("wemap.DaskMapper needs dask") and "pip install 'wemap[dask]'" in reason, reason
    assert reason.count("wemap.DaskMapper") == 1 and reason.count("pip install") == 1, reason


def test_a_goal_whose_target_lies_within_the_spread_says_so():
    from wemap.benchmarks.summary import goals_table

    def row(key, med, lo, hi):
        return {"status": "ok", "key": key, "workload": "noop", "atoms": 1, "walkers": 1, "workers": 1,
                "cycle_s_median": med, "cycle_s_min": lo, "cycle_s_max": hi}

    cell = {"workload": "noop", "atoms": 1, "walkers": 1, "workers": 1}
    rows = [row("SharedMemWorkerMapper", 0.06, 0.06, 0.065), row("ray", 0.31, 0.09, 0.85), row("wepy", 2.2, 2.0, 2.4),
            row("floor", 0.1, 0.1, 0.1)]
    by_goal = {g["compared_with"]: g for g in goals(rows, cell)}
    assert by_goal["ray"]["met"] and by_goal["ray"]["unsettled"]  # 5.2x from the medians; 1.4x to 14x
    assert not by_goal["wepy"]["unsettled"] and not by_goal["floor"]["unsettled"]
    text = goals_table(list(by_goal.values()))
    assert text.count("unsettled") == 1 and "1.38–14.17" in text


def test_the_per_task_goal_is_the_difference_of_the_medians_per_walker():
    def row(key, cycles):
        return {"status": "ok", "key": key, **PER_TASK_CELL, "cycle_s": cycles,
                "cycle_s_median": statistics.median(cycles)}

    n = PER_TASK_CELL["walkers"]
    floor = row("floor", [0.00050, 0.00052, 0.00054, 0.00056, 0.00058])
    shm = row("SharedMemWorkerMapper", [0.00080, 0.00085, 0.00090, 0.00095, 0.00200])
    g = per_task_goal([floor, shm])
    assert g["value"] == pytest.approx((0.00090 - 0.00054) / n * 1e6)  # 45 µs a task
    assert g["met"] and g["op"] == "<=" and g["target"] == 50 and g["spread_from"] == "quartiles"
    low, high = g["spread"]  # quartiles, not the 2 ms outlier
    assert low == pytest.approx((0.00085 - 0.00056) / n * 1e6) and high == pytest.approx((0.00095 - 0.00052) / n * 1e6)
    assert g["unsettled"] == (low < 50 < high)
    slow = per_task_goal([floor, row("SharedMemWorkerMapper", [0.0012] * 5)])
    assert not slow["met"] and slow["value"] == pytest.approx((0.0012 - 0.00054) / n * 1e6)
    other_cell = dict(shm, atoms=1000)
    missing = per_task_goal([floor, other_cell])
    assert missing["value"] is None and "SharedMemWorkerMapper not measured" in missing["reason"]


def test_short_cycles_are_timed_for_the_minimum_time():
    assert not enough(199, 0.199, 5, 0.2) and enough(201, 0.201, 5, 0.2)
    assert enough(5, 0.5, 5, 0.2) and not enough(4, 0.4, 5, 0.2), "long cycles: --repeats"
    assert enough(2000, 0.0002, 5, 0.2), "capped"
    assert enough(5, 0.005, 5, 0.0) and not enough(0, 0.0, 1, 0.0)


def test_cells_that_do_not_fit_are_skipped_with_the_reason(tmp_path):
    code, text = _run(TINY + ["--memory-budget", "1e-6", "--out", str(tmp_path), "--name", "skip"])
    assert code == 0
    data = json.loads((tmp_path / "skip.json").read_text())
    assert data["rows"] and all(r["status"] == "skipped" for r in data["rows"])
    assert all("needs ~" in r["reason"] for r in data["rows"])
    assert "skipped: needs ~" in text
    assert data["files"]["png"] is None


def test_unknown_mapper_is_an_error(tmp_path, capsys):
    assert main(["--mappers", "nosuchmapper", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "unknown mapper" in capsys.readouterr().err


def test_names_and_sizes():
    keys = [c.key for c in select(discover(), ["wepy WorkerMapper", "RAY", "shared_mem_worker_mapper"])]
    assert keys == ["SharedMemWorkerMapper", "wepy", "ray"]
    assert [parse_atoms(s) for s in ("1000", "10k", "1M", "1_000_000")] == [1000, 10_000, 1_000_000, 1_000_000]


def test_bench_subcommand_plugs_into_a_parent_parser():
    parser = argparse.ArgumentParser(prog="wemap")
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--quick", "--atoms", "1k", "--no-openmm"])
    assert args.func is run_bench and args.quick and args.atoms == [1000] and args.openmm is False


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "wemap.benchmarks", "--help"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0
    assert "--quick" in out.stdout and "--mappers" in out.stdout and "--out" in out.stdout


def test_a_hung_cell_times_out():
    with pytest.raises(CellTimeout), deadline(0.2):
        time.sleep(5)
    with deadline(0.5):  # disarmed on the way out
        pass
    time.sleep(0.7)


def test_fresh_segment_hands_back_new_arrays_with_the_same_contents():
    from wemap.benchmarks.workloads import fresh_segment, make_walkers

    (w,) = make_walkers(1, 50)
    out = fresh_segment(w)
    for k, v in w.state.items():
        assert out.state[k] is not v and not np.shares_memory(out.state[k], v)
        np.testing.assert_array_equal(out.state[k], v)
    assert out.weight == w.weight
    assert fresh_segment(w).state["positions"] is out.state["positions"], "made once per process, then reused"


def test_memory_budget_follows_a_cgroup_limit(tmp_path):
    from wemap.benchmarks.report import cgroup_room

    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("1000\n")
    assert cgroup_room(str(tmp_path)) is None
    (tmp_path / "memory.max").write_text(f"{8 * 2**30}\n")
    (tmp_path / "memory.current").write_text(f"{3 * 2**30}\n")
    assert cgroup_room(str(tmp_path)) == 5 * 2**30
    assert cgroup_room(str(tmp_path / "nothing-here")) is None


def test_wepy_runner_gets_each_workers_device(monkeypatch):
    """In the OpenMM section wepy's runner, like wemap's, runs each worker on that worker's device."""
    pytest.importorskip("openmm")
    import wemap
    from wemap.benchmarks.openmm_section import TimedWepySegment
    from wemap.worker import _set_current

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    seen = []

    class Runner:
        _last_cycle_segments_split_times = [{"steps_time": 0.0}]

        def run_segment(self, walker, segment_length, platform_kwargs=None):
            seen.append(platform_kwargs)
            return type("W", (), {})()

    segment = TimedWepySegment(Runner(), "CUDA", num_workers=2, devices=[4, 6])
    for idx in (0, 1):
        previous = _set_current(wemap.Worker(idx, 2))
        try:
            segment(object(), 10)
        finally:
            _set_current(previous)
    assert seen == [{"DeviceIndex": "4"}, {"DeviceIndex": "6"}]


def test_loop_workload_maps_each_cycles_results_in_the_next():
    """The WE-loop cell must time what a WE run does: the walkers going in are last cycle's results."""
    import wemap
    from wemap.benchmarks.contenders import Contender
    from wemap.benchmarks.measure import time_mapper
    from wemap.benchmarks.workloads import WORKLOADS, make_walkers

    seen: list[list[int]] = []

    class Recording(wemap.Mapper):
        def map(self, *args, **kwargs):
            walkers = list(args[0])
            seen.append([id(w) for w in walkers])
            out = super().map(walkers, *args[1:], **kwargs)
            returned.append([id(o) for o in out])
            return out

    returned: list[list[int]] = []
    recorder = Contender("rec", "recording Mapper", "wemap", lambda k, f: Recording(segment_func=f), in_process=True)
    ws = make_walkers(3, 20)
    time_mapper(recorder, ws, WORKLOADS["loop"], 0.0, 1, repeats=3, warmup=1)
    assert seen[0] == [id(w) for w in ws], "the first cycle maps the made walkers"
    assert all(seen[c + 1] == returned[c] for c in range(3)), "every later cycle maps the previous results"
    seen.clear()
    returned.clear()
    time_mapper(recorder, ws, WORKLOADS["fresh"], 0.0, 1, repeats=2, warmup=1)
    assert all(s == [id(w) for w in ws] for s in seen), "the other workloads map the same walkers every cycle"


def _bench_script(name: str):
    """bench/<name>.py loaded as a module (the scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cycle_gap_script_times_each_pause(tmp_path):
    """bench/cycle_gap.py at a tiny size: one row per pause, each a positive cycle time beside a floor's."""
    cycle_gap = _bench_script("cycle_gap")
    out = tmp_path / "gap.json"
    args = ["--atoms", "50", "--walkers", "2", "--workers", "1", "--cycles", "3", "--out", str(out)]
    assert cycle_gap.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["pause"] for r in rows][0] == "none (back to back)" and len(rows) == 4
    assert all(r["cycle_ms"] > 0 and r["us_per_task"] == pytest.approx(r["cycle_ms"] * 1e3 / 2) for r in rows)
    assert all(r["floor_ms"] > 0 and r["over_floor_us"] == pytest.approx((r["cycle_ms"] - r["floor_ms"]) * 1e3 / 2)
               for r in rows)
