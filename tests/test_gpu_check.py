"""bench/gpu_check.sh and bench/gpu_check.py, as far as the CPU goes: the same checks on the CPU
platform (what the GPU run does, small), the table printed whatever fails, the files in $OUT."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openmm")

pytestmark = [pytest.mark.openmm]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def run_check(tmp_path, *args, python=sys.executable, timeout=150):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "GPU_CHECK_DIR": str(tmp_path / "work")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(["bash", str(SCRIPT), "--no-install", "--python", str(python), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=timeout)


def table(stdout):
    lines = stdout[stdout.index("wemap GPU check:"):].splitlines()
    rows = {}
    for line in lines[3:]:
        cells = line.split(None, 4)
        if len(cells) >= 3 and not line.startswith("logs:"):
            rows.setdefault(cells[0], []).append(line)
    return lines[0], rows


def test_the_shell_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)
    out = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "bash bench/gpu_check.sh" in out.stdout


@pytest.mark.timeout(170)
@pytest.mark.slow
def test_cpu_dry_run_runs_every_check_and_prints_one_table(tmp_path):
    proc = run_check(tmp_path, "--platform", "CPU", "--quick")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    title, rows = table(proc.stdout)
    assert title.startswith("wemap GPU check: platform CPU")
    assert any("import" in r and " ok " in r for r in rows["step"])
    for mapper in ("SharedMemWorkerMapper", "WorkerMapper"):
        got = "\n".join(line for line in proc.stdout.splitlines() if line.startswith(f"contexts {mapper}"))
        assert "one build per worker" in got and "(want 1 each)" in got
        assert "Threads per worker" in got and "second runner replaces the first" in got
    bench = "\n".join(rows["bench"])
    runners = 2 if importlib.util.find_spec("wepy") is not None else 1  # wepy's row only with wepy there
    assert "wemap OpenMMRunner" in bench and "in integrator.step" in bench
    assert ("wepy OpenMMRunner" in bench) == (runners == 2)
    assert "FAIL" not in proc.stdout
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"gpu_check.json", "check.log", "gpu-check-bench.json",
                                               "gpu-check-logs.tar.gz"}
    saved = json.loads((out / "gpu_check.json").read_text())
    fractions = [r["data"]["step_fraction"] for r in saved["rows"] if r["section"] == "bench" and "data" in r]
    assert len(fractions) == runners and all(0 < f <= 1 for f in fractions)


@pytest.mark.timeout(90)
def test_a_missing_platform_still_prints_the_table_with_the_plugin_failures(tmp_path):
    import openmm

    if "CUDA" in [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]:
        pytest.skip("this machine has OpenMM's CUDA platform")
    proc = run_check(tmp_path, "--platform", "CUDA", "--quick", timeout=80)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _, rows = table(proc.stdout)
    cuda = next(r for r in rows["platform"] if "CUDA platform" in r)
    assert "FAIL" in cuda and "plugin load failures:" in cuda
    assert any("wemap require_platform" in r and "refused at once" in r for r in rows["platform"])
    assert any("skip" in r for r in rows["contexts"]) and any("skip" in r for r in rows["bench"])


@pytest.mark.timeout(90)
def test_checks_that_die_leave_what_they_recorded_and_a_failing_exit(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n"
                    "case \"$*\" in *--deadline*) echo 'Fatal Python error: simulated'; kill -9 $$ ;; esac\n"
                    f"exec {sys.executable} \"$@\"\n")
    fake.chmod(0o755)
    proc = run_check(tmp_path, "--platform", "CPU", "--quick", python=fake, timeout=80)
    assert proc.returncode != 0
    assert "Fatal Python error: simulated" in proc.stdout
    assert "(the checks ended with exit 137 before their table: what they recorded)" in proc.stdout
    title, rows = table(proc.stdout)
    assert title.startswith("wemap GPU check: platform CPU") and any("import" in r for r in rows["step"])


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_dropin_dry_run_prints_both_runs_and_saves_their_cycles(tmp_path):
    pytest.importorskip("wepy")
    proc = run_check(tmp_path, "--dropin", "--platform", "CPU", "--quick", timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for label in ("wemap SharedMemWorkerMapper + WepyOpenMMRunner", "wemap WorkerMapper + wepy's OpenMMRunner"):
        assert any(line.startswith(f"| {label} |") and line.endswith("| True |") for line in proc.stdout.splitlines())
    title, rows = table(proc.stdout)
    assert title.startswith("wemap GPU check: platform CPU")
    assert [r.split()[1:3] for r in rows["step"]] == [["import", "ok"], ["dropin", "ok"]]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"gpu-wepy-dropin.json", "dropin.log", "gpu-check-logs.tar.gz"}
    saved = json.loads((out / "gpu-wepy-dropin.json").read_text())
    assert saved["atoms"] == 900 and saved["args"]["worker"] == "cpu"
    assert [len(r["cycle_s"]) for r in saved["rows"]] == [2, 2]
    assert all(r["finite"] and all(t > 0 for t in r["cycle_s"]) for r in saved["rows"])
