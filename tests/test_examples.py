"""examples/: every example runs at a tiny size on CPU, as a user would run it; the batch scripts parse."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))
BATCH = sorted(EXAMPLES.glob("*.sbatch"))


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 150) -> subprocess.CompletedProcess:
    """``args`` run as a user would, with ``env`` over this environment."""
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def example_env() -> dict[str, str]:
    """This interpreter first on PATH, as a user's activated virtual environment is."""
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_examples_and_batch_scripts():
    assert {p.name for p in SCRIPTS} >= {"wepy_manager_hdf5.py", "gpu_node.py", "dask_cluster.py"}
    assert {p.name for p in BATCH} >= {"gpu_node.sbatch", "dask_cluster.sbatch"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_example_starts_nothing_at_import(script):
    """Workers import the script: everything that runs must sit under ``if __name__ == "__main__":``."""
    tree = ast.parse(script.read_text())
    guards = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "__name__ == '__main__'"]
    assert len(guards) == 1, f"{script.name} has no `if __name__ == '__main__':`"
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.If, ast.Assign, ast.AnnAssign)
    for node in tree.body:
        is_docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        assert is_docstring or isinstance(node, allowed), f"{script.name} line {node.lineno} runs at import"


@pytest.mark.parametrize("script", BATCH, ids=lambda p: p.name)
def test_batch_scripts_parse(script):
    proc = run(["bash", "-n", str(script)], cwd=EXAMPLES)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --time=" in text


# -- wepy's Manager with wemap's mapper and runner, recorded by WepyHDF5Reporter -------------------
@pytest.mark.wepy
@pytest.mark.timeout(180)
@pytest.mark.parametrize("runner, datasets", [("wepy", {"forces", "box_volume"}), ("lean", {"segment_timings"})])
@pytest.mark.slow
def test_wepy_manager_example_writes_the_hdf5_file(tmp_path, runner, datasets):
    pytest.importorskip("openmm")
    pytest.importorskip("wepy")
    pytest.importorskip("mdtraj", reason="wepy's HDF5 reporter imports mdtraj")
    h5py = pytest.importorskip("h5py")
    out = tmp_path / "run.wepy.h5"
    proc = run([sys.executable, str(EXAMPLES / "wepy_manager_hdf5.py"), "--runner", runner, "--walkers", "4",
                "--cycles", "3", "--steps", "20", "--workers", "2", "--out", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "weight sum 1.0000000000000" in proc.stdout
    with h5py.File(out, "r") as f:
        run0 = f["runs/0"]
        assert sorted(run0["trajectories"]) == ["0", "1", "2", "3"]
        traj = run0["trajectories/0"]
        assert traj["positions"].shape == (3, 22, 3)
        assert datasets <= set(traj), f"{runner} runner: {sorted(traj)}"
        weights = [run0[f"trajectories/{i}/weights"][-1, 0] for i in range(4)]
        assert sum(weights) == pytest.approx(1.0, abs=1e-12)
        assert len(run0["resampling/decision_id"]) == 3 * 4, "REVO's decisions, one per walker per cycle"


# -- one GPU node under SLURM ----------------------------------------------------------------------
def test_gpu_node_puts_k_workers_on_each_gpu_side_by_side():
    pytest.importorskip("openmm")  # the example imports it
    gpu_node = load("gpu_node")
    assert gpu_node.worker_devices([0, 1, 2, 3], 1) == [0, 1, 2, 3]
    assert gpu_node.worker_devices([0, 1], 2) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="at least 1"):
        gpu_node.worker_devices([0], 0)


@pytest.mark.timeout(150)
def test_gpu_node_batch_script_runs_on_cpu(tmp_path):
    pytest.importorskip("openmm")
    out = tmp_path / "stats.json"
    proc = run(["bash", str(EXAMPLES / "gpu_node.sbatch"), "--platform", "CPU", "--workers", "2", "--walkers", "4",
                "--cycles", "2", "--steps", "20", "--out", str(out)], cwd=tmp_path, env=example_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stats = json.loads(out.read_text())
    assert stats["num_workers"] == 2 and len(stats["cycles"]) == 2
    assert all(abs(c["weight_sum"] - 1.0) < 1e-12 for c in stats["cycles"])
    assert "MPS started" not in proc.stdout, "one worker per GPU needs no MPS"


@pytest.mark.timeout(150)
def test_gpu_node_batch_script_starts_and_stops_mps_for_k_workers_per_gpu(tmp_path):
    pytest.importorskip("openmm")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "mps.log"
    fake = bin_dir / "nvidia-cuda-mps-control"  # records how it was called, as the real one is
    fake.write_text(f'#!/bin/bash\necho "args:$* stdin:$( [ -t 0 ] || cat )" >> "{log}"\n')
    fake.chmod(0o755)
    env = example_env()
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", WORKERS_PER_GPU="2", TMPDIR=str(tmp_path))
    proc = run(["bash", str(EXAMPLES / "gpu_node.sbatch"), "--platform", "CPU", "--workers", "2", "--walkers", "4",
                "--cycles", "1", "--steps", "20", "--out", str(tmp_path / "s.json")], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MPS started for 2 workers per GPU" in proc.stdout
    calls = log.read_text().splitlines()
    assert calls[0].startswith("args:-d") and calls[-1] == "args: stdin:quit", calls


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mask", ["", None], ids=["empty mask", "no mask, no GPU driver"])
def test_gpu_node_without_visible_gpus_says_so(tmp_path, mask):
    pytest.importorskip("openmm")
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")}
    if mask is None:
        if os.path.isdir("/proc/driver/nvidia/gpus") or os.path.exists("/dev/nvidia0"):
            pytest.skip("this machine has an NVIDIA driver")
    else:
        env["CUDA_VISIBLE_DEVICES"] = mask
    proc = subprocess.run([sys.executable, str(EXAMPLES / "gpu_node.py"), "--platform", "CUDA"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=50, env=env)
    assert proc.returncode == 2
    assert "no GPUs are visible" in proc.stderr and "Traceback" not in proc.stderr


# -- several nodes through DaskMapper ----------------------------------------------------------------
@pytest.mark.timeout(150)
def test_dask_example_on_a_local_cluster(tmp_path):
    pytest.importorskip("openmm")
    pytest.importorskip("distributed")
    proc = run([sys.executable, str(EXAMPLES / "dask_cluster.py"), "--workers", "2", "--walkers", "4",
                "--cycles", "2", "--steps", "20"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 cycles on 2 Dask workers" in proc.stdout
    assert proc.stdout.count("weight sum 1.000000000000000") == 2


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_dask_example_joins_a_cluster_through_its_scheduler_file(tmp_path):
    """What dask_cluster.sbatch starts on several nodes, on this one: a scheduler and two named workers."""
    pytest.importorskip("openmm")
    pytest.importorskip("distributed")
    dask_cli = Path(sys.executable).parent / "dask"
    if not dask_cli.exists():
        dask_cli = shutil.which("dask")
    if not dask_cli:
        pytest.skip("the dask command is not installed")
    sched = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0"}
    common = ["--no-dashboard"]
    procs = [subprocess.Popen([str(dask_cli), "scheduler", "--scheduler-file", str(sched), "--host", "127.0.0.1",
                               "--port", "0", *common], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for name in ("gpu-0", "gpu-1"):
            procs.append(subprocess.Popen(
                [str(dask_cli), "worker", "--scheduler-file", str(sched), "--name", name, "--nthreads", "1",
                 "--host", "127.0.0.1", *common], cwd=tmp_path, env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        proc = run([sys.executable, str(EXAMPLES / "dask_cluster.py"), "--scheduler-file", str(sched),
                    "--workers", "2", "--walkers", "4", "--cycles", "2", "--steps", "20", "--start-timeout", "90"],
                   cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "2 cycles on 2 Dask workers" in proc.stdout
    finally:
        for p in reversed(procs):  # workers first, so that none reconnects to a scheduler going away
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        deadline = time.monotonic() + 30  # the nannies' worker processes end after their nannies
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.1)


# -- type checking ------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
@pytest.mark.slow
def test_mypy_passes_on_the_public_api_and_the_examples(tmp_path):
    """``python -m mypy`` with pyproject.toml's [tool.mypy]: the package's entry modules and examples/."""
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install '.[test]'")
    root = EXAMPLES.parent
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")], cwd=root,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
