"""ndarray subclasses in walkers come back as `Mapper` returns them, through every process mapper.

A masked array's mask, a matrix's type, a subclass's own attributes are part of the walker:
shared memory carries raw bytes only, so such arrays travel pickled (as `WorkerMapper` sends
everything) instead of as array fields, and nothing is silently stripped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import segfuncs

from wemap import Mapper, SharedMemWorkerMapper, Walker, WorkerMapper

MAPPERS = [WorkerMapper, SharedMemWorkerMapper]


def subclass_arrays(tmp_path) -> dict[str, np.ndarray]:
    mm = np.memmap(tmp_path / "memmap", dtype=np.float64, mode="w+", shape=(4,))
    mm[:] = [1.0, 2.0, 3.0, 4.0]
    return {
        "masked": np.ma.masked_array([1.0, 2.0, 1e30, 3.0], mask=[0, 0, 1, 0]),  # mean 2 with its mask
        "matrix": np.matrix([[1.0, 2.0], [3.0, 4.0]]),
        "memmap": mm,
        "attribute": segfuncs.InfoArray(np.arange(4.0), info="kept"),
    }


def assert_same(got: Any, want: Any, where: str) -> None:
    if isinstance(want, Walker):
        assert type(got) is Walker and got.weight == want.weight, where
        assert list(got.state) == list(want.state), where
        for k in want.state:
            assert_same(got.state[k], want.state[k], f"{where}, field {k!r}")
        return
    assert type(got) is type(want), f"{where}: {type(got).__name__}, not {type(want).__name__}"
    if not isinstance(want, np.ndarray):
        assert got == want, where
        return
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=where)
    if isinstance(want, np.ma.MaskedArray):
        np.testing.assert_array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(want), err_msg=where)
        assert got.mean() == want.mean(), where
    assert getattr(got, "info", None) == getattr(want, "info", None), where


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
@pytest.mark.parametrize("segment_func", [segfuncs.echo, segfuncs.scale])
@pytest.mark.parametrize("mapper_cls", MAPPERS)
def test_subclass_arrays_come_back_as_from_mapper(mapper_cls, segment_func, tmp_path):
    arrays = subclass_arrays(tmp_path)
    walkers: list[Any] = [Walker({"x": a, "plain": np.ones(3), "time": 1.0}, 0.5) for a in arrays.values()]
    walkers.append(Walker(dict(arrays), 1.0))
    walkers += list(arrays.values())  # not in a walker: each is the argument itself
    factors = [2.0] * len(walkers)
    with Mapper(segment_func=segment_func) as m:
        want = m.map(walkers, factors)
    with mapper_cls(segment_func=segment_func, num_workers=1) as m:
        got = m.map(walkers, factors)
        got_again = m.map(got, factors)  # results fed back (from shared memory, for SharedMemWorkerMapper)
    with Mapper(segment_func=segment_func) as m:
        want_again = m.map(want, factors)
    for i, (g, w) in enumerate(zip(got + got_again, want + want_again)):
        assert_same(g, w, f"walker {i % len(walkers)}")


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
@pytest.mark.parametrize("mapper_cls", MAPPERS)
def test_subclass_arrays_in_wepy_walkers(mapper_cls, tmp_path):
    wepy_walker = pytest.importorskip("wepy.walker")
    arrays = subclass_arrays(tmp_path)
    walkers = [wepy_walker.Walker(wepy_walker.WalkerState(positions=np.ones((4, 3)), extra=a), 0.25)
               for a in arrays.values()]
    with mapper_cls(segment_func=segfuncs.echo, num_workers=1) as m:
        got = m.map(walkers, [1] * len(walkers))
    for g, (kind, a) in zip(got, arrays.items()):
        assert type(g) is wepy_walker.Walker and g.weight == 0.25
        np.testing.assert_array_equal(g.state["positions"], np.ones((4, 3)))
        assert_same(g.state["extra"], a, kind)
