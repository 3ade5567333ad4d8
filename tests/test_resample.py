"""wemap.resample.BinnedResampler: weight conservation and limits, as properties over random ensembles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wemap
from wemap.resample import BinnedResampler, reweighted

EDGES = [-120.0, -60.0, 0.0, 60.0, 120.0]


def ensemble(raw_weights, values):
    total = math.fsum(raw_weights)
    return [
        wemap.Walker({"positions": np.full((2, 3), float(i)), "x": v}, w / total)
        for i, (w, v) in enumerate(zip(raw_weights, values))
    ]


@st.composite
def ensembles(draw, max_walkers=40):
    n = draw(st.integers(1, max_walkers))
    raw = draw(st.lists(st.floats(1e-3, 1e3, allow_nan=False), min_size=n, max_size=n))
    values = draw(st.lists(st.floats(-200, 200, allow_nan=False), min_size=n, max_size=n))
    return ensemble(raw, values)


def progress(walker):
    return walker.state["x"]


@settings(max_examples=200, deadline=None)
@given(walkers=ensembles(), per_bin=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_weights_conserved_and_bins_filled(walkers, per_bin, seed):
    r = BinnedResampler(EDGES, per_bin, progress=progress, seed=seed)
    out = r.resample(walkers)
    assert abs(math.fsum(w.weight for w in out.walkers) - 1.0) < 1e-12
    before = r.bin_of([progress(w) for w in walkers])
    after = r.bin_of([progress(w) for w in out.walkers])
    assert list(after) == out.bins
    for b in set(before):  # each occupied bin keeps its weight and ends with per_bin walkers
        w_in = math.fsum(w.weight for w, bb in zip(walkers, before) if bb == b)
        w_out = math.fsum(w.weight for w, bb in zip(out.walkers, after) if bb == b)
        assert abs(w_in - w_out) <= 1e-15 * max(1.0, len(walkers))
        assert sum(1 for bb in after if bb == b) == per_bin
    assert set(after) == set(before)  # no bin emptied, none filled from nowhere
    for w, parent in zip(out.walkers, out.parents):  # every walker is a clone of its parent
        np.testing.assert_array_equal(w.state["positions"], walkers[parent].state["positions"])


@settings(max_examples=200, deadline=None)
@given(
    walkers=ensembles(),
    per_bin=st.integers(1, 12),
    min_exp=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_never_below_min_weight(walkers, per_bin, min_exp, seed):
    min_weight = 10.0 ** -min_exp
    walkers = [w for w in walkers if w.weight >= min_weight] or walkers[:1]
    total = math.fsum(w.weight for w in walkers)
    walkers = [reweighted(w, w.weight / total) for w in walkers]
    if walkers[0].weight < min_weight:
        return
    r = BinnedResampler(EDGES, per_bin, progress=progress, min_weight=min_weight, seed=seed)
    out = r.resample(walkers)
    assert min(w.weight for w in out.walkers) >= min_weight
    assert abs(math.fsum(w.weight for w in out.walkers) - 1.0) < 1e-12
    if not out.refused["split"]:  # only min_weight may leave a bin short
        assert all(out.bins.count(b) == per_bin for b in set(out.bins))


@settings(max_examples=200, deadline=None)
@given(walkers=ensembles(), per_bin=st.integers(1, 8), max_weight=st.floats(0.05, 1.0), seed=st.integers(0, 1000))
def test_never_above_max_weight(walkers, per_bin, max_weight, seed):
    r = BinnedResampler(EDGES, per_bin, progress=progress, min_weight=1e-12, max_weight=max_weight, seed=seed)
    out = r.resample(walkers)
    assert max(w.weight for w in out.walkers) <= max_weight
    assert abs(math.fsum(w.weight for w in out.walkers) - 1.0) < 1e-12


@settings(max_examples=50, deadline=None)
@given(walkers=ensembles(), per_bin=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_same_seed_same_result(walkers, per_bin, seed):
    a = BinnedResampler(EDGES, per_bin, progress=progress, seed=seed).resample(walkers)
    b = BinnedResampler(EDGES, per_bin, progress=progress, seed=seed).resample(walkers)
    assert a.parents == b.parents
    assert [w.weight for w in a.walkers] == [w.weight for w in b.walkers]


def test_weights_sum_to_one_over_many_cycles():
    rng = np.random.default_rng(0)
    walkers = ensemble([1.0] * 8, [0.0] * 8)
    r = BinnedResampler(EDGES, 5, progress=progress, seed=1)
    for _ in range(200):  # a random walk of the progress coordinate, resampled every step
        moved = [wemap.Walker({**w.state, "x": w.state["x"] + rng.normal(0, 30)}, w.weight) for w in walkers]
        walkers = r.resample(moved).walkers
        assert abs(math.fsum(w.weight for w in walkers) - 1.0) < 1e-12


def test_split_into_equal_clones_and_merge_survivor_by_weight():
    r = BinnedResampler([0.0], 3, seed=0)
    out = r.resample([wemap.Walker({"x": 1}, 0.6)], values=[-1.0])
    assert [w.weight for w in out.walkers] == pytest.approx([0.2, 0.2, 0.2])
    assert out.n_splits == 1 and out.parents == [0, 0, 0]
    # merging a light and a heavy walker: the heavy one survives about as often as its weight says
    survived_heavy = 0
    trials = 2000
    r = BinnedResampler([0.0], 1, seed=123)
    for _ in range(trials):
        out = r.resample([wemap.Walker({"x": 0}, 0.2), wemap.Walker({"x": 1}, 0.8)], values=[1.0, 1.0])
        assert len(out.walkers) == 1 and out.walkers[0].weight == pytest.approx(1.0)
        survived_heavy += out.parents[0] == 1
    assert abs(survived_heavy / trials - 0.8) < 0.04


def test_refusals_and_bad_input():
    r = BinnedResampler([0.0], 4, min_weight=0.3)
    out = r.resample([wemap.Walker({}, 1.0)], values=[0.5])
    assert len(out.walkers) == 3 and out.refused["split"] == 1  # a 4th clone would be 0.25 < 0.3
    r = BinnedResampler([0.0], 1, max_weight=0.5)
    out = r.resample([wemap.Walker({}, 0.4), wemap.Walker({}, 0.4)], values=[1.0, 1.0])
    assert len(out.walkers) == 2 and out.refused["merge"] == 1
    with pytest.raises(ValueError, match="increasing"):
        BinnedResampler([1.0, 0.0], 2)
    with pytest.raises(ValueError, match="twice min_weight"):
        BinnedResampler([0.0], 2, min_weight=0.3, max_weight=0.5)
    with pytest.raises(ValueError, match="finite"):
        BinnedResampler([0.0], 2).resample([wemap.Walker({}, 1.0)], values=[float("nan")])
    with pytest.raises(ValueError, match="progress"):
        BinnedResampler([0.0], 2).resample([wemap.Walker({}, 1.0)])


def test_wepy_walkers_are_resampled_as_wepy_walkers():
    wepy_walker = pytest.importorskip("wepy.walker")
    walkers = [wepy_walker.Walker(wepy_walker.WalkerState(x=np.zeros(1)), 0.5) for _ in range(2)]
    out = BinnedResampler([0.0], 4, seed=0).resample(walkers, values=[1.0, 1.0])
    assert all(type(w) is wepy_walker.Walker for w in out.walkers)
    assert math.fsum(w.weight for w in out.walkers) == pytest.approx(1.0, abs=1e-15)
