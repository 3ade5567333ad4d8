"""The ``wemap`` command line: ``wemap demo`` with tiny settings, run as a user would."""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

import wemap
from wemap import cli, sim
from wemap.cli import build_parser, format_cycle_table, resolve_mapper

TINY = ["--walkers", "4", "--per-bin", "2", "--cycles", "3", "--steps", "20", "--seed", "1"]


def wemap_cmd(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """``python -m wemap ...`` with the wemap this test imports (the installed one, compiled ring included)."""
    return subprocess.run([sys.executable, "-m", "wemap", *args], capture_output=True, text=True, timeout=timeout, **kw)


def table_rows(stdout: str) -> tuple[str, list[list[str]]]:
    """The demo's header line and its rows, split into cells (the per-worker cell is several words)."""
    lines = stdout.splitlines()
    header = next(line for line in lines if line.strip().startswith("cycle"))
    body = lines[lines.index(header) + 2:]
    rows = [line.split() for line in body[: body.index("")] if line[:1] == " " or line[:1].isdigit()]
    return header, rows


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mapper", ["SharedMemWorkerMapper", "Mapper"])
def test_demo_tiny_run_prints_a_row_per_cycle(tmp_path, mapper):
    pytest.importorskip("openmm")
    out = tmp_path / "demo.json"
    proc = wemap_cmd("demo", *TINY, "--workers", "2", "--mapper", mapper, "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"; {mapper} with " in proc.stdout, "the demo ran another mapper than the one asked for"
    assert "not available" not in proc.stderr, proc.stderr
    header, rows = table_rows(proc.stdout)
    for column in ("ran", "kept", "weight sum", "phi min", "phi max", "segments s", "per-worker busy s",
                   "overhead s", "in step %"):
        assert column in header
    assert [r[0] for r in rows] == ["0", "1", "2"]
    assert rows[0][1] == "4", "the first cycle runs the 4 initial walkers"
    assert all(r[2] == "2" for r in rows), "2 walkers kept in the one occupied bin (--per-bin 2)"
    assert all(float(r[3]) == pytest.approx(1.0, abs=1e-12) for r in rows)
    # stdout and stderr are pipes here, as in a batch job's log: no progress bar, no carriage returns
    assert "\r" not in proc.stdout + proc.stderr and "WE cycles" not in proc.stderr
    # every column is explained in the output itself
    for column in ("ran ", "kept ", "in step %", "overhead s"):
        assert column in proc.stdout.split("cycles in")[1]
    stats = json.loads(out.read_text())
    assert len(stats["cycles"]) == 3
    assert all(abs(c["weight_sum"] - 1.0) < 1e-12 for c in stats["cycles"])
    assert [c["n_segments"] for c in stats["cycles"]] == [4, 2, 2]
    assert stats["settings"]["mapper"] == mapper


@pytest.mark.timeout(120)
def test_demo_prints_each_row_before_the_next_cycle_starts(monkeypatch, capsys):
    pytest.importorskip("openmm")
    seen_at_start: list[str] = []
    real_cycle = sim._cycle

    def cycle(walkers, mapper, cycle_idx, *args, **kwargs):
        seen_at_start.append(capsys.readouterr().out)
        return real_cycle(walkers, mapper, cycle_idx, *args, **kwargs)

    monkeypatch.setattr(sim, "_cycle", cycle)
    rc = cli.main(["demo", *TINY, "--mapper", "Mapper", "--platform", "Reference"])
    assert rc == 0
    assert len(seen_at_start) == 3
    for k in (1, 2):  # when cycle k starts, the row of cycle k - 1 is out
        assert seen_at_start[k].split()[0] == str(k - 1), seen_at_start[k]


@pytest.mark.timeout(120)
def test_demo_draws_the_progress_bar_on_a_terminal():
    pytest.importorskip("openmm")
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a pty starts 0 columns wide
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "wemap", "demo", *TINY, "--mapper", "Mapper", "--platform", "Reference"],
            stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=100,
        )
        os.close(terminal)
        terminal = -1
        err = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other end is closed and everything was read
                break
            if not chunk:
                break
            err += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert proc.returncode == 0, proc.stdout
    assert b"WE cycles" in err and b"3/3" in err
    assert "\r" not in proc.stdout, "the rows go to stdout whole, without the bar's carriage returns"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("platform", ["Bogus", "CUDA"])
def test_demo_platform_not_here_is_a_one_line_error(platform):
    openmm = pytest.importorskip("openmm")
    here = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if platform in here:
        pytest.skip(f"this machine has OpenMM's {platform} platform")
    proc = wemap_cmd("demo", *TINY, "--platform", platform, timeout=50)
    assert proc.returncode == 2
    assert proc.stdout == "", "nothing started"
    assert proc.stderr.startswith("wemap demo: error: ") and repr(platform) in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.timeout(60)
def test_demo_without_openmm_is_a_one_line_error():
    code = "import sys; sys.modules['openmm'] = None; from wemap.cli import main; raise SystemExit(main(['demo']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 2
    assert proc.stderr.startswith("wemap demo: error: wemap.openmm needs OpenMM"), proc.stderr
    assert "pip install 'wemap[openmm]'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, level", [(["demo"], 0), (["-v", "demo"], 1), (["demo", "-v"], 1),
                                         (["demo", "-vv"], 2), (["-v", "bench"], 1), (["bench", "-vv"], 2)])
def test_verbose_before_or_after_the_subcommand(argv, level):
    assert build_parser().parse_args(argv).verbose == level


@pytest.mark.timeout(60)
def test_version_is_the_package_version():
    proc = wemap_cmd("--version", timeout=50)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"wemap {wemap.__version__}"
    assert importlib.metadata.version("wemap") == wemap.__version__, "the installed metadata has another version"


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


def test_table_rows_line_up_with_the_header():
    stats = sim.CycleStats(
        cycle_idx=12, n_walkers=6, weight_sum=1.0, progress_min=-170.25, progress_max=65.0, segment_wall_s=1.5,
        worker_segment_times={0: [0.5, 0.25], 1: [0.75]}, max_worker_busy_s=0.75, mapper_overhead_s=0.75,
        n_segments=3, segment_timings_sum=[0.0, 0.1, 0.9, 0.1],
    )
    lines = format_cycle_table([stats], "phi").splitlines()
    assert len({len(line) for line in lines}) == 1, lines
    cells = lines[2].split()
    assert cells[:6] == ["12", "3", "6", "1.000000000000000", "-170.2", "65.0"]
    assert cells[-1] == "60", "in step %: 0.9 s of 1.5 s busy"


@pytest.mark.parametrize("flags", [["--seed", "0"], ["--bin-width", "0"], ["--bin-width", "-5"], ["--devices", ","],
                                   ["--devices", "-1"]])
def test_bad_demo_flags_are_usage_errors(flags):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", *flags])
