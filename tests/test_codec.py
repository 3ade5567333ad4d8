"""The slot-region format on its own: round trips, and descriptors that must be refused."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import wemap
from wemap.codec import (
    _HEAD,
    DATA_START,
    IN_REGION,
    ArrayCodec,
    Codec,
    CodecRegistry,
    decode_call,
    encode_call,
    read_descriptor,
    write_call,
)
from wemap.memcopy import BlockPool

REGION = 1 << 16


def regions():
    return np.zeros(REGION, np.uint8), np.zeros(REGION, np.uint8)


def round_trip(obj, *, copy=True):
    reg = CodecRegistry()
    regs = regions()
    write_call(encode_call(reg, (obj,), {"n": 3}, where="walker 0", region=IN_REGION), regs[0])
    args, kwargs = decode_call(reg, read_descriptor(regs[0]), regs, copy=copy, readonly=True, pool=BlockPool())
    assert kwargs == {"n": 3}
    return args[0]


_dtypes = st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(), hnp.complex_number_dtypes(),
                    hnp.boolean_dtypes(), hnp.datetime64_dtypes(),
                    st.just(np.dtype([("x", "<f8"), ("id", "<i4")])), st.just(np.dtype([("xyz", "<f4", (3,))])))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(_dtypes, hnp.array_shapes(min_dims=0, max_dims=3, max_side=6)), st.booleans())
def test_any_raw_array_round_trips(arr, copy):
    w = wemap.Walker({"a": arr, "weight_note": "kept"}, 0.25)
    out = round_trip(w, copy=copy)
    assert out.state["a"].dtype == arr.dtype and out.state["a"].shape == arr.shape
    assert out.state["a"].tobytes() == arr.tobytes()
    assert out.state["weight_note"] == "kept" and out.weight == 0.25


def _put(regs, desc) -> None:
    data = pickle.dumps(desc)
    out = regs[1]
    out[128 : 128 + len(data)] = np.frombuffer(data, np.uint8)
    out[:16] = np.frombuffer(_HEAD.pack(128, len(data)), np.uint8)


def _entry(*field):
    return {"args": [("array", None, [field])], "kwargs": {}}


@pytest.mark.parametrize(
    "desc, message",
    [
        (_entry("array", "<f8", (2**40,), 1, DATA_START), "outside its slot region"),
        (_entry("array", "<f8", (4,), 5, DATA_START), "region 5"),
        (_entry("array", "<f8", (4,), 1, 8), "outside its slot region"),
        (_entry("array", "zz", (4,), 1, DATA_START), "bad dtype"),
        (_entry("array", "|O", (4,), 1, DATA_START), "Python objects"),
        (_entry("array", "<f8", (-1,), 1, DATA_START), "bad shape"),
        ({"args": [("no-such-codec", None, [])], "kwargs": {}}, "no-such-codec"),
        ([1, 2], "malformed"),
        ({"args": [], "kwargs": [1]}, "malformed"),
    ],
)
def test_corrupt_descriptor_is_refused_before_any_copy(desc, message):
    regs = regions()
    _put(regs, desc)
    with pytest.raises(ValueError, match=message):
        decode_call(CodecRegistry(), read_descriptor(regs[1]), regs, copy=True, readonly=True, pool=BlockPool())


def test_duplicate_codec_names_are_refused():
    class Mine(Codec):
        def accepts(self, obj):
            return False

    with pytest.raises(ValueError, match="codec name 'codec' is used by both Mine and Mine"):
        CodecRegistry([Mine(), Mine()])

    class Shadow(ArrayCodec):
        pass

    with pytest.raises(ValueError, match="'array' is used by both Shadow and ArrayCodec"):
        CodecRegistry([Shadow()])
