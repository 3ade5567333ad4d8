"""The typed array helpers (wemap._arrays): a buffer's address, and a walker's arrays copied in one call."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wemap._arrays import copy_arrays, data_address


def test_data_address_is_where_the_first_byte_is():
    """What ``__array_interface__`` says, for views, strided, read-only and non-numpy buffers alike."""
    a = np.arange(100, dtype=np.float64).reshape(10, 10)
    ro = a[2:].view()
    ro.flags.writeable = False
    for arr in (a, a[3:], a[:, 4], a.T, a[::-2, ::3], ro, np.zeros(0)):
        assert data_address(arr) == arr.__array_interface__["data"][0]
    b = bytearray(b"abc")
    assert data_address(b) == np.frombuffer(b, np.uint8).ctypes.data
    assert data_address(memoryview(b)[1:]) == data_address(b) + 1
    with pytest.raises(TypeError):
        data_address(3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["<f8", "<f4", "<i8", "u1", "<c16"]), st.integers(0, 700)),
                min_size=0, max_size=6), st.integers(0, 3))
def test_copy_arrays_matches_copyto_into_views(specs, gap_lines):
    """Each array lands byte for byte where ``np.copyto`` into a view at its offset would put it."""
    rng = np.random.default_rng(len(specs))
    arrays = [rng.integers(0, 255, size=n * np.dtype(dt).itemsize, dtype=np.uint8).view(dt) for dt, n in specs]
    offsets, at = [], 128
    for a in arrays:
        offsets.append(at)
        at += (a.nbytes + 63) // 64 * 64 + 64 * gap_lines
    region = np.full(at + 64, 0xA5, dtype=np.uint8)
    want = region.copy()
    for a, off in zip(arrays, offsets):
        np.copyto(np.ndarray(a.shape, a.dtype, want, off), a)
    copy_arrays(region, offsets, arrays)
    np.testing.assert_array_equal(region, want)


def test_copy_arrays_refuses_what_it_cannot_copy_and_copies_nothing():
    region = np.zeros(4096, dtype=np.uint8)
    a = np.arange(64, dtype=np.float64)
    with pytest.raises(BufferError, match="array 1 is not a C-contiguous"):
        copy_arrays(region, [0, 1024], [a, np.arange(32.0).reshape(4, 8).T])  # np.copyto must lay that out
    with pytest.raises(ValueError, match="array 1 .* does not fit the 4096-byte destination"):
        copy_arrays(region, [0, 4096 - 8], [a, a])
    with pytest.raises(ValueError, match="does not fit"):
        copy_arrays(region, [-8], [a])
    with pytest.raises(BufferError, match="destination"):
        copy_arrays(region[::2], [0], [a])
    with pytest.raises(BufferError, match="destination"):
        ro = region.view()
        ro.flags.writeable = False
        copy_arrays(ro, [0], [a])
    with pytest.raises(ValueError, match="2 arrays but 1 offsets"):
        copy_arrays(region, [0], [a, a])
    assert not region.any(), "nothing was copied by a call that raised"


def test_copy_arrays_allows_overlap_and_large_copies():
    big = np.random.default_rng(1).random(200_000)  # 1.6 MB: copied without the GIL
    region = np.zeros(big.nbytes + 256, dtype=np.uint8)
    copy_arrays(region, [128], [big])
    np.testing.assert_array_equal(np.ndarray(big.shape, big.dtype, region, 128), big)
    inside = np.ndarray((1000,), np.float64, region, 128)  # a view of the destination itself
    expect = inside.copy()
    copy_arrays(region, [136], [inside])  # shifted by one element onto itself: memmove semantics
    np.testing.assert_array_equal(np.ndarray((1000,), np.float64, region, 136), expect)


def test_copy_arrays_holds_every_source_until_it_has_copied():
    """Code that runs while the arrays are gathered (a sequence's __getitem__) cannot resize a source
    already checked: its buffer is held, so the resize fails and the copy is of what was checked."""
    src = bytearray(b"x" * 1000)
    refused = []

    class Sources(list):
        def __getitem__(self, k):
            if k == 1:
                try:
                    src.extend(b"y" * 10_000_000)  # would move the bytes the first span points to
                except BufferError as exc:
                    refused.append(exc)
            return list.__getitem__(self, k)

    region = np.zeros(4096, dtype=np.uint8)
    copy_arrays(region, [0, 2048], Sources([src, b"z" * 8]))
    assert refused, "the held buffer refused the resize"
    assert bytes(region[:1000]) == b"x" * 1000 and bytes(region[2048:2056]) == b"z" * 8


def test_copy_arrays_refuses_object_arrays():
    region = np.zeros(4096, dtype=np.uint8)
    with pytest.raises(BufferError, match="Python objects"):
        copy_arrays(region, [0], [np.array([None, 1], dtype=object)])
    assert not region.any()
