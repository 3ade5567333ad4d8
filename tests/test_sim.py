"""wemap.sim: the cycle driver through every mapper: weights, statistics, cleanup on errors and Ctrl-C."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import segfuncs
from mappers import MAPPERS as ALL_MAPPERS

import wemap
from wemap import sim
from wemap.resample import BinnedResampler

# the contract suite's mappers that run on this machine's processes (Dask has its own tests)
MAPPERS = {name: cls for name, cls in ALL_MAPPERS.items() if name != "DaskMapper"}
PROCESS_MAPPERS = [name for name in MAPPERS if name != "Mapper"]

pytestmark = pytest.mark.timeout(90)


def explode_in_cycle_1(walker, segment_length, cycle_idx=0, walker_idx=0):
    """Segment function (module level, so workers can import it) that fails in cycle 1."""
    if cycle_idx == 1 and walker_idx == 2:
        raise RuntimeError("segment blew up")
    return segfuncs.displace(walker, segment_length)


def mean_x(walker):
    return float(np.mean(walker.state["positions"][:, 0]))


def start_walkers(n=6):
    walkers = [segfuncs.make_walker(4, seed=i, weight=1.0 / n) for i in range(n)]
    return walkers


@pytest.mark.parametrize("mapper_name", list(MAPPERS))
def test_weights_sum_to_one_every_cycle_and_stats(mapper_name):
    seen = []
    resampler = BinnedResampler(np.linspace(0.3, 0.7, 5), 3, progress=mean_x, seed=0)
    mapper = MAPPERS[mapper_name](num_workers=2)
    result = sim.run(
        start_walkers(), segfuncs.displace, mapper, n_cycles=4, segment_length=10,
        resampler=resampler, reporters=[lambda stats, walkers: seen.append((stats.cycle_idx, len(walkers)))],
        show_progress=False,
    )
    assert [c.cycle_idx for c in result.cycles] == [0, 1, 2, 3]
    assert seen == [(c.cycle_idx, c.n_walkers) for c in result.cycles]
    n_workers = 1 if mapper_name == "Mapper" else 2
    for c in result.cycles:
        assert abs(c.weight_sum - 1.0) < 1e-12
        assert c.progress_min <= c.progress_max
        assert sorted(c.worker_segment_times) == list(range(n_workers))
        busy = max(math.fsum(t) for t in c.worker_segment_times.values())
        assert c.max_worker_busy_s == pytest.approx(busy)
        assert c.mapper_overhead_s == pytest.approx(c.segment_wall_s - busy)
        assert c.segment_wall_s >= busy
        assert c.segment_timings_sum is None  # displace records no timings
    assert math.fsum(w.weight for w in result.walkers) == pytest.approx(1.0, abs=1e-12)
    json.dumps([c.as_dict() for c in result.cycles])
    with pytest.raises(RuntimeError, match="after cleanup"):  # the driver cleaned the mapper up
        mapper.map([1], [1])


def test_without_resampler_walkers_pass_through_boundary_conditions():
    calls = []

    def bc(walkers, cycle_idx):
        calls.append(cycle_idx)
        return walkers[:-1] + [wemap.Walker(walkers[-1].state, walkers[-1].weight)]

    result = sim.run(start_walkers(3), segfuncs.displace, wemap.Mapper(), 3, 5, boundary_conditions=bc,
                     show_progress=False)
    assert calls == [0, 1, 2]
    assert len(result.walkers) == 3 and result.cycles[-1].progress_min is None
    np.testing.assert_allclose(result.walkers[0].state["positions"], start_walkers(3)[0].state["positions"] + 0.015)


@pytest.mark.parametrize("mapper_name", PROCESS_MAPPERS)
def test_failing_segment_cleans_up(mapper_name):
    mapper = MAPPERS[mapper_name](num_workers=2)
    with pytest.raises(wemap.TaskException, match="segment blew up"):
        sim.run(start_walkers(4), explode_in_cycle_1, mapper, 3, 5, show_progress=False)
    with pytest.raises(RuntimeError, match="after cleanup"):
        mapper.map([1], [1])
    # the autouse fixture checks that no worker process is left behind


@pytest.mark.parametrize("mapper_name", list(MAPPERS))
def test_keyboard_interrupt_cleans_up(mapper_name):
    def interrupt(stats, walkers):
        if stats.cycle_idx == 1:
            raise KeyboardInterrupt

    mapper = MAPPERS[mapper_name](num_workers=2)
    with pytest.raises(KeyboardInterrupt):
        sim.run(start_walkers(4), segfuncs.displace, mapper, 5, 5, reporters=[interrupt], show_progress=False)
    with pytest.raises(RuntimeError, match="after cleanup"):
        mapper.map([1], [1])


# -- wepy's resamplers ---------------------------------------------------------------------------
def _wepy_mean_x_distance():
    """A wepy ``Distance`` on the walkers' mean x: the simplest metric REVO can spread walkers along."""
    from wepy.resampling.distances.distance import Distance

    class MeanX(Distance):
        def image(self, state):
            return np.array([float(np.mean(state["positions"][:, 0]))])

        def image_distance(self, image_a, image_b):
            return float(abs(image_a[0] - image_b[0]))

    return MeanX()


@pytest.mark.wepy
def test_wepy_no_resampler_passes_the_walkers_through():
    pytest.importorskip("wepy")
    from wepy.resampling.resamplers.resampler import NoResampler

    walkers = start_walkers(4)
    result = sim.run(walkers, segfuncs.displace, wemap.Mapper(), 3, 5, resampler=NoResampler(), show_progress=False)
    assert [c.n_walkers for c in result.cycles] == [4, 4, 4]
    assert all(c.n_splits == 0 and c.n_merges == 0 for c in result.cycles)
    assert [w.weight for w in result.walkers] == [w.weight for w in walkers]
    np.testing.assert_allclose(result.walkers[1].state["positions"], walkers[1].state["positions"] + 0.015)


@pytest.mark.wepy
@pytest.mark.parametrize("mapper_name", ["Mapper", "WorkerMapper"])
def test_wepy_revo_resampler_clones_and_merges_keeping_weight(mapper_name):
    pytest.importorskip("wepy")
    from wepy.resampling.resamplers.revo import REVOResampler

    walkers = start_walkers(8)
    # spread the walkers out in x and give them unequal weights, so REVO has something to do
    weights = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.05, 0.05, 0.05])
    walkers = [wemap.Walker({**w.state, "positions": w.state["positions"] + 0.05 * i}, float(weights[i]))
               for i, w in enumerate(walkers)]
    decisions = []

    class RecordingREVO(REVOResampler):
        def resample(self, walkers):
            out = super().resample(walkers)
            decisions.append([(int(r["decision_id"][0]), len(r["target_idxs"])) for r in out[1]])
            return out

    resampler = RecordingREVO(distance=_wepy_mean_x_distance(), init_state=walkers[0].state, char_dist=0.1,
                              merge_dist=0.5, pmin=1e-6, pmax=0.5, seed=3)
    mapper = MAPPERS[mapper_name](num_workers=2)
    result = sim.run(walkers, segfuncs.displace, mapper, 4, 5, resampler=resampler, progress=mean_x,
                     show_progress=False)
    clone, squash = REVOResampler.DECISION.ENUM.CLONE.value, REVOResampler.DECISION.ENUM.SQUASH.value
    for c, made in zip(result.cycles, decisions, strict=True):
        assert c.n_walkers == 8, "REVO keeps the number of walkers"
        assert abs(c.weight_sum - 1.0) < 1e-12
        # splits: walkers cloned; merges: walkers merged away (as BinnedResampler counts them)
        assert c.n_splits == sum(d == clone for d, _ in made)
        assert c.n_merges == sum(d == squash for d, _ in made)
        assert c.n_merges == sum(n - 1 for d, n in made if d == clone), "each extra clone takes a merged walker's place"
        assert c.progress_min is not None
    assert sum(c.n_splits for c in result.cycles) > 0, "REVO cloned nothing: the test shows nothing"
    assert all(isinstance(w, wemap.Walker) for w in result.walkers)
    assert max(w.weight for w in result.walkers) <= 0.5 + 1e-12


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one walker"):
        sim.run([], segfuncs.displace, wemap.Mapper(), 1, 1, show_progress=False)


# -- the OpenMM runner, under this driver and under wepy's Manager -------------------------------
@pytest.fixture(scope="module")
def ala():
    pytest.importorskip("openmm")
    from wemap import systems

    return systems.alanine_dipeptide()


@pytest.mark.parametrize("mapper_name", list(MAPPERS))
def test_openmm_we_run_keeps_weights(ala, mapper_name):
    from wemap import systems
    from wemap.openmm import TIMING_FIELDS, OpenMMRunner

    runner = OpenMMRunner(ala.system, ala.integrator(), platform="CPU")
    phi = systems.backbone_dihedral(ala.topology, "phi")
    resampler = BinnedResampler(np.arange(-150.0, 180.0, 30.0), 3, progress=phi, seed=1)
    result = sim.run(ala.walkers(4, seed=2), runner.run_segment, MAPPERS[mapper_name](num_workers=2), 3, 20,
                     resampler=resampler, show_progress=False)
    runner.release()
    for c in result.cycles:
        assert abs(c.weight_sum - 1.0) < 1e-12
        assert -180 <= c.progress_min <= c.progress_max <= 180
        assert len(c.segment_timings_sum) == len(TIMING_FIELDS)
        assert c.segment_timings_sum[2] > 0  # time inside integrator.step
    assert result.cycles[0].segment_timings_sum[0] > 0  # the first cycle built the contexts


@pytest.mark.wepy
def test_same_runner_in_wepy_manager(ala):
    pytest.importorskip("wepy")
    from wepy.resampling.resamplers.resampler import NoResampler
    from wepy.sim_manager import Manager
    from wepy.walker import Walker as WepyWalker

    from wemap.openmm import OpenMMRunner

    runner = OpenMMRunner(ala.system, ala.integrator(), platform="CPU")
    mapper_cls = MAPPERS.get("SharedMemWorkerMapper", wemap.WorkerMapper)
    manager = Manager(ala.walkers(4, seed=3, walker_type=WepyWalker), runner=runner, resampler=NoResampler(),
                      work_mapper=mapper_cls(num_workers=2))
    walkers, _ = manager.run_simulation(3, 20, num_workers=2)
    assert len(walkers) == 4
    assert math.fsum(w.weight for w in walkers) == pytest.approx(1.0, abs=1e-12)
    assert all(float(w.state["time"][0]) == pytest.approx(0.12) for w in walkers)
    # and the very same runner object under wemap's own driver afterwards
    result = sim.run(ala.walkers(2, seed=4), runner.run_segment, wemap.Mapper(), 2, 20, show_progress=False)
    assert result.walkers[0].state["time"] == pytest.approx(0.08)
    runner.release()
