"""The ``wemap`` command line: ``wemap demo`` with tiny settings, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import wemap
from wemap.cli import build_parser, format_cycle_table, resolve_mapper

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def wemap_cmd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m wemap ...`` with the wemap this test imports (the installed one, compiled ring included)."""
    return subprocess.run([sys.executable, "-m", "wemap", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mapper", ["SharedMemWorkerMapper", "Mapper"])
def test_demo_tiny_run_prints_the_table(tmp_path, mapper):
    pytest.importorskip("openmm")
    out = tmp_path / "demo.json"
    proc = wemap_cmd(
        "demo", "--walkers", "4", "--per-bin", "2", "--cycles", "3", "--steps", "20", "--workers", "2",
        "--mapper", mapper, "--seed", "1", "--out", str(out),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"; {mapper} with " in proc.stdout, "the demo ran another mapper than the one asked for"
    assert "not available" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.strip().startswith("cycle"))
    for column in ("walkers", "weight sum", "phi min", "phi max", "segments s", "per-worker busy s", "overhead s"):
        assert column in header
    body = lines[lines.index(header) + 2:]
    rows = [line.split() for line in body[: body.index("")]]
    assert [r[0] for r in rows] == ["0", "1", "2"]
    assert all(float(r[2]) == pytest.approx(1.0, abs=1e-12) for r in rows)
    assert "WE cycles" in proc.stderr  # the progress bar
    stats = json.loads(out.read_text())
    assert len(stats["cycles"]) == 3
    assert all(abs(c["weight_sum"] - 1.0) < 1e-12 for c in stats["cycles"])
    assert stats["settings"]["mapper"] == mapper


@pytest.mark.timeout(90)
def test_no_subcommand_is_a_usage_error():
    proc = wemap_cmd(timeout=60)
    assert proc.returncode == 2
    assert "demo" in proc.stderr


def test_parser_defaults_and_device_list():
    args = build_parser().parse_args(["demo", "--devices", "0,1,2,3"])
    assert args.devices == [0, 1, 2, 3]
    assert args.mapper == "SharedMemWorkerMapper" and args.platform == "CPU" and args.workers == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--devices", "gpu0"])


def test_resolve_mapper():
    assert resolve_mapper("WorkerMapper") is wemap.WorkerMapper
    assert resolve_mapper("Mapper") is wemap.Mapper
    assert resolve_mapper("SharedMemWorkerMapper").__name__ in ("SharedMemWorkerMapper", "WorkerMapper")


def test_table_of_no_cycles_is_just_the_header():
    assert format_cycle_table([]).splitlines()[0].split()[0] == "cycle"


@pytest.mark.parametrize("flags", [["--seed", "0"], ["--bin-width", "0"], ["--bin-width", "-5"], ["--devices", ","],
                                   ["--devices", "-1"]])
def test_bad_demo_flags_are_usage_errors(flags):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", *flags])
