"""Numeric parameters of the mappers: refused clearly when they make no sense, honoured as given
when they do (``inf``: no limit); and arrays keep their dtype, byte order included.
"""

from __future__ import annotations

import math
import time

import numpy as np
import paramfuncs
import pytest
import segfuncs
from mappers import MAPPERS

from wemap import Mapper, SharedMemWorkerMapper, WorkerException, WorkerMapper
from wemap.faults import RetryPolicy

pytestmark = pytest.mark.timeout(60)

POOL_MAPPERS = [WorkerMapper, SharedMemWorkerMapper]  # the mappers that run a WorkerPool
TIMEOUT_MAPPERS = [name for name in MAPPERS if name != "DaskMapper"]  # Dask has no task_timeout


@pytest.fixture(params=TIMEOUT_MAPPERS)
def timeout_mapper_cls(request):
    return MAPPERS[request.param]


@pytest.fixture(params=POOL_MAPPERS, ids=lambda c: c.__name__)
def pool_mapper_cls(request):
    return request.param


# -- the retry policy: every mapper ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["task_timeout", "first_task_timeout"])
@pytest.mark.parametrize(
    "value, error, match",
    [
        (math.nan, ValueError, r"must be a number of seconds, got nan"),
        (0, ValueError, "must be positive"),
        (-1.0, ValueError, "must be positive"),
        (-math.inf, ValueError, "must be positive"),
        ("5", TypeError, r"must be a number of seconds .*got str"),
        (True, TypeError, r"must be a number of seconds .*got bool"),
    ],
    ids=["nan", "zero", "negative", "-inf", "str", "bool"],
)
def test_bad_task_timeouts_are_refused_naming_them(timeout_mapper_cls, name, value, error, match):
    with pytest.raises(error, match=rf"^{name} {match}"):
        timeout_mapper_cls(segment_func=segfuncs.add, num_workers=1, **{name: value})


@pytest.mark.parametrize(
    "value, error, match",
    [
        (-1, ValueError, "max_retries must be >= 0, got -1"),
        (1.5, TypeError, "max_retries must be an int, got float 1.5"),
        (math.nan, TypeError, "max_retries must be an int, got float nan"),
        (math.inf, TypeError, "max_retries must be an int, got float inf"),
        (True, TypeError, "max_retries must be an int, got bool True"),
        ("2", TypeError, "max_retries must be an int, got str '2'"),
    ],
    ids=["negative", "float", "nan", "inf", "bool", "str"],
)
def test_bad_max_retries_are_refused(mapper_cls, value, error, match):
    with pytest.raises(error, match=f"^{match}$"):
        mapper_cls(segment_func=segfuncs.add, num_workers=1, max_retries=value)


def test_numpy_numbers_are_accepted():
    policy = RetryPolicy(max_retries=np.int64(3), task_timeout=np.float32(0.5))
    assert policy.max_retries == 3 and policy.timeout_for(first_segment=False) == 0.5


@pytest.mark.parametrize(
    "kwargs",
    [{"task_timeout": math.inf}, {"first_task_timeout": math.inf},
     {"task_timeout": math.inf, "first_task_timeout": 2.0}],
    ids=["task", "first", "task-with-first"],
)
def test_infinite_task_timeout_means_no_limit(timeout_mapper_cls, kwargs):
    policy = RetryPolicy(**kwargs)
    first = None if kwargs.get("first_task_timeout", math.inf) == math.inf else kwargs["first_task_timeout"]
    assert policy.timeout_for(first_segment=True) == first
    assert policy.timeout_for(first_segment=False) is None
    with timeout_mapper_cls(segment_func=segfuncs.add, num_workers=2, **kwargs) as m:
        assert m.map([1, 2, 3], [10, 20, 30]) == [11, 22, 33]
        assert m.map([1, 2, 3], [10, 20, 30]) == [11, 22, 33]  # past every worker's first segment


# -- the worker pool: start and stop timeouts --------------------------------------------------------
@pytest.mark.parametrize(
    "name, value, error, match",
    [
        ("start_timeout", math.nan, ValueError, "start_timeout must be a number of seconds, got nan"),
        ("start_timeout", 0, ValueError, "start_timeout must be positive"),
        ("start_timeout", -3, ValueError, "start_timeout must be positive"),
        ("start_timeout", "3", TypeError, "start_timeout must be a number of seconds .*got str"),
        ("stop_timeout", math.nan, ValueError, "stop_timeout must be a number of seconds, got nan"),
        ("stop_timeout", -1, ValueError, "stop_timeout must be >= 0"),
        ("stop_timeout", math.inf, ValueError, "stop_timeout must be finite"),
        ("stop_timeout", None, TypeError, "stop_timeout must be a number of seconds .*got NoneType"),
    ],
    ids=["start-nan", "start-zero", "start-negative", "start-str",
         "stop-nan", "stop-negative", "stop-inf", "stop-None"],
)
def test_bad_pool_timeouts_are_refused_before_any_worker_starts(pool_mapper_cls, name, value, error, match):
    m = pool_mapper_cls(segment_func=segfuncs.add, num_workers=1, **{name: value})
    with pytest.raises(error, match=f"^{match}"):
        m.init()
    m.cleanup()  # the autouse fixture checks that no process and no segment was left


def test_infinite_start_timeout_and_zero_stop_timeout_work(pool_mapper_cls):
    with pool_mapper_cls(segment_func=segfuncs.add, num_workers=1, start_timeout=math.inf, stop_timeout=0) as m:
        assert m.map([1], [2]) == [3]


@pytest.mark.timeout(30)
@pytest.mark.slow
def test_start_timeout_is_the_bound_on_a_hanging_worker_init(pool_mapper_cls):
    """The error comes start_timeout after the workers were started, not that plus a stop's grace
    (a worker still in its Worker.init reads no stop request: it is ended at once)."""
    start_timeout = 1.5
    m = pool_mapper_cls(segment_func=segfuncs.add, num_workers=2, worker_init=paramfuncs.hang_in_init,
                        start_timeout=start_timeout)
    t0 = time.monotonic()
    with pytest.raises(WorkerException, match=r"did not finish starting within 1.5 s \(start_timeout\)"):
        m.init()
    elapsed = time.monotonic() - t0
    m.cleanup()
    # before: start_timeout + stop_timeout (5 s) + terminate's grace; the margin covers a loaded machine
    assert start_timeout <= elapsed < start_timeout + 2.5, elapsed


# -- dtypes ------------------------------------------------------------------------------------------------
A = np.arange(12, dtype=">f8").reshape(3, 4)
ARRAYS = {
    "big-endian": A,
    "big-endian, non-contiguous": A[:, ::2],
    "big-endian, Fortran order": np.asfortranarray(A),
    "big-endian, 0-d": np.array(2.5, dtype=">f4"),
    "big-endian unicode": np.array(["ab", "c"], dtype=">U3"),
    "mixed-endian structured": np.array([(1, 2.0)], dtype=[("x", ">i4"), ("y", "<f8")]),
    "big-endian masked": np.ma.masked_array(A, mask=A > 3),
    "little-endian": np.arange(4, dtype="<i2"),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_worker_mapper_keeps_dtypes_as_mapper_does(name):
    arr = ARRAYS[name]
    with Mapper(segment_func=paramfuncs.identity) as m:
        expected = m.map([arr, {"a": arr}])
    with WorkerMapper(segment_func=paramfuncs.identity, num_workers=1) as m:
        out = m.map([arr, {"a": arr}])
    for got, want in ((out[0], expected[0]), (out[1]["a"], expected[1]["a"])):
        assert type(got) is type(want) and got.dtype == want.dtype == arr.dtype and got.shape == want.shape
        assert np.array_equal(got, want) and got.tobytes() == arr.tobytes()
        if isinstance(arr, np.ma.MaskedArray):
            assert np.array_equal(got.mask, arr.mask)
