"""A replacement worker frozen while it starts (SIGSTOP, a cgroup freeze during its ``Worker.init``)
is not the walkers' end: once ``start_timeout`` has passed it is killed and another started, as
one that died while starting is, and the map completes."""

from __future__ import annotations

import time

import paramfuncs
import pytest

from wemap import SharedMemWorkerMapper, WorkerMapper

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("cls", [WorkerMapper, SharedMemWorkerMapper], ids=lambda c: c.__name__)
@pytest.mark.slow
def test_replacement_frozen_while_starting_is_replaced(cls, tmp_path):
    start_timeout = 3.0
    with cls(segment_func=paramfuncs.kill_once_at, num_workers=2, worker_init=paramfuncs.freeze_once_when_armed,
             worker_attributes={"marker_dir": str(tmp_path)}, start_timeout=start_timeout) as m:
        (tmp_path / "arm").touch()  # the workers are up: the next one to start freezes in its init
        t0 = time.monotonic()
        out = m.map(list(range(6)), victim=[2] * 6, marker_dir=[str(tmp_path)] * 6, walker_idx=list(range(6)))
        took = time.monotonic() - t0
        assert out == list(range(6))
        assert (tmp_path / "killed").exists() and (tmp_path / "frozen").exists()
        assert m.recovered_segments == 1
        assert took >= start_timeout  # it did wait for the frozen replacement, then moved on
