"""wepy's own simulation manager drives wemap's mappers as its work_mapper."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("wepy")

from wepy.resampling.resamplers.resampler import NoResampler  # noqa: E402
from wepy.runners.randomwalk import RandomWalkRunner  # noqa: E402
from wepy.sim_manager import Manager  # noqa: E402
from wepy.work_mapper.mapper import Mapper as WepyMapper  # noqa: E402
from wepy_runners import DeterministicRunner, init_walkers  # noqa: E402

pytestmark = [pytest.mark.wepy, pytest.mark.timeout(120)]


def test_random_walk_with_no_resampler(mapper_cls):
    n = 8
    sim = Manager(
        init_walkers(n),
        runner=RandomWalkRunner(probability=0.25),
        resampler=NoResampler(),
        work_mapper=mapper_cls(num_workers=2),
    )
    walkers, _ = sim.run_simulation(4, 10, num_workers=2)
    assert len(walkers) == n
    assert sum(w.weight for w in walkers) == pytest.approx(1.0)
    for w in walkers:
        pos = w.state["positions"]
        assert pos.shape == (1, 3) and np.all(pos >= 0)
    assert sim.work_mapper.worker_segment_times is not None


def test_deterministic_runner_matches_wepy_mapper(mapper_cls):
    def run(work_mapper):
        sim = Manager(
            init_walkers(6, n_atoms=4),
            runner=DeterministicRunner(),
            resampler=NoResampler(),
            work_mapper=work_mapper,
        )
        walkers, _ = sim.run_simulation(3, [5, 7, 9], num_workers=2)
        return walkers

    ours = run(mapper_cls(num_workers=2))
    ref = run(WepyMapper())
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.weight == b.weight
        np.testing.assert_array_equal(a.state["positions"], b.state["positions"])
        assert a.state["time"] == b.state["time"]
