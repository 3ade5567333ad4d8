"""README.md: every Python block runs as written (at a small size on CPU) and passes mypy.

Blocks run as scripts in a fresh folder, as a user who pastes one into a file would run it.
The OpenMM block names its two inputs on top (``PDB``, ``PLATFORM``) and its sizes in its
calls; the test sets the inputs to the PDB wemap ships and the CPU platform, and the sizes to a
few walkers and steps, each replacement checked to apply exactly once, so a README change that
drops one fails here instead of testing something else.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def shipped_pdb() -> str:
    from wemap.systems import alanine_dipeptide_pdb

    return alanine_dipeptide_pdb()


#: for a block containing the key: (what it needs installed, replacements (old, new) applied once each)
SMALLER: dict[str, tuple[tuple[str, ...], list[tuple[str, str]]]] = {
    "walkers_from_pdb(": (("openmm",), [
        ('PDB = "protein.pdb"', "PDB = {pdb!r}"),
        ('PLATFORM = "CUDA"', 'PLATFORM = "CPU"'),
        ("walkers_from_pdb(PDB, 48,", "walkers_from_pdb(PDB, 4,"),
        ("n_cycles=100, segment_length=10_000", "n_cycles=2, segment_length=20"),
    ]),
}


def runnable(block: str) -> str:
    """The block as the test runs it: itself, or made small by `SMALLER`."""
    for key, (needs, replacements) in SMALLER.items():
        if key in block:
            for module in needs:
                pytest.importorskip(module)
            for old, new in replacements:
                assert block.count(old) == 1, f"the README block no longer has {old!r} once:\n{block}"
                block = block.replace(old, new.format(pdb=shipped_pdb()))
    return block


def test_the_readme_has_its_python_blocks_and_set_up_commands():
    blocks = python_blocks()
    assert len(blocks) >= 3
    assert any("SharedMemWorkerMapper(segment_func=" in b for b in blocks)
    assert any(key in b for b in blocks for key in SMALLER)
    text = README.read_text()
    # .ci/run takes the test command from the line after "Run the test suite"; the quick start's demo
    assert "\npython3 -m venv .venv && .venv/bin/pip install '.[openmm,bench]' && .venv/bin/wemap demo\n" in text
    tail = text[text.index("\nRun the test suite"):]
    first = next(line for line in tail.splitlines() if line.startswith("python3 -m venv"))
    assert first.startswith("python3 -m venv .venv && .venv/bin/pip install '.[test,openmm,wepy,dask]' && "
                            ".venv/bin/python -m pytest")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("index", range(len(python_blocks())), ids=lambda i: f"block{i}")
def test_readme_python_block_runs(index, tmp_path):
    block = runnable(python_blocks()[index])
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(block)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, \
        f"README block {index} failed:\n{block}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@pytest.mark.timeout(300)
def test_readme_python_blocks_pass_mypy(tmp_path):
    """The public API's annotations accept what the README shows (``np.linspace`` bin edges, ...)."""
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install '.[test]'")
    files = []
    for i, block in enumerate(python_blocks()):
        path = tmp_path / f"readme_block_{i}.py"
        path.write_text(block)
        files.append(str(path))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
         str(tmp_path / "cache"), *files],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
