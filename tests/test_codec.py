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
    _LAYOUT_LEN,
    ARENA_REGION,
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


def _put(regs, layout, meta=(None,)) -> None:
    """A descriptor in the output region, in the format `write_call` writes, from raw parts."""
    lay = pickle.dumps(layout)
    data = _LAYOUT_LEN.pack(len(lay)) + lay + pickle.dumps(list(meta))
    out = regs[1]
    out[128 : 128 + len(data)] = np.frombuffer(data, np.uint8)
    out[:16] = np.frombuffer(_HEAD.pack(128, len(data)), np.uint8)


def _entry(*field):
    return 1, (), (("array", (field,)),)


@pytest.mark.parametrize(
    "layout, message",
    [
        (_entry("array", "<f8", (2**40,), 1, DATA_START), "outside its slot region"),
        (_entry("array", "<f8", (4,), 2, 0), "region 2, which this slot does not have"),
        (_entry("array", "<f8", (4,), 5, DATA_START), "region 5"),
        (_entry("array", "<f8", (4,), 1, 8), "outside its slot region"),
        (_entry("array", "zz", (4,), 1, DATA_START), "bad dtype"),
        (_entry("array", "|O", (4,), 1, DATA_START), "Python objects"),
        (_entry("array", "<f8", (-1,), 1, DATA_START), "bad shape"),
        ((1, (), (("no-such-codec", ()),)), "no-such-codec"),
        ([1, 2], "malformed"),
        ((0, [1], (("scalar", ()),)), "malformed"),
        ((3, (), (("scalar", ()),)), "malformed"),
        ((1, (), (("array", (("array", "<f8"),)),)), "malformed"),
        ((1, (), (([1], ()),)), "malformed"),
        ((0, "k", (("scalar", ()),)), "malformed"),
        ((0, ("k", "k"), (("scalar", ()), ("scalar", ()))), "malformed"),
    ],
)
def test_corrupt_descriptor_is_refused_before_any_copy(layout, message):
    regs = regions()
    _put(regs, layout)
    with pytest.raises(ValueError, match=message):
        decode_call(CodecRegistry(), read_descriptor(regs[1]), regs, copy=True, readonly=True, pool=BlockPool())


@pytest.mark.parametrize("meta", [(), (1, 2)])
def test_metadata_that_does_not_match_its_layout_is_refused(meta):
    regs = regions()
    _put(regs, _entry("array", "<f8", (4,), 1, DATA_START), meta)
    with pytest.raises(ValueError, match="malformed slot descriptor"):
        decode_call(CodecRegistry(), read_descriptor(regs[1]), regs, copy=True, readonly=True, pool=BlockPool())


def test_a_layout_that_overruns_its_descriptor_is_refused():
    regs = regions()
    _put(regs, _entry("array", "<f8", (4,), 1, DATA_START))
    out = regs[1]
    _LAYOUT_LEN.pack_into(out, 128, 10_000)
    with pytest.raises(ValueError, match="runs past the descriptor"):
        read_descriptor(out)


def test_a_layout_is_parsed_once_and_stays_bound_to_the_regions_it_is_checked_against():
    """The cache keys a layout by its bytes; which regions it fits is checked for every call."""
    reg = CodecRegistry()
    w = wemap.Walker({"x": np.arange(12.0).reshape(4, 3)}, 0.5)
    big = regions()
    write_call(encode_call(reg, (w,), {}, where="walker 0", region=IN_REGION), big[0])
    first = read_descriptor(big[0])
    decode_call(reg, first, big, copy=True, readonly=True)
    decode_call(reg, read_descriptor(big[0]), big, copy=True, readonly=True)
    assert len(reg._parsed) == 1 and reg.layout(first.layout) is reg.layout(bytes(first.layout))
    small = (big[0][:DATA_START + 8], big[1])  # the same bytes, a region too small for the field
    with pytest.raises(ValueError, match="field 'x' lies outside its slot region"):
        decode_call(reg, first, small, copy=True, readonly=True)


def test_walkers_differing_only_in_metadata_share_one_layout_and_keep_their_own_values():
    reg = CodecRegistry()
    regs = regions()
    seen = []
    for i in range(5):
        w = wemap.Walker({"x": np.full((3, 3), float(i)), "note": f"n{i}"}, weight=1 / (i + 2))
        write_call(encode_call(reg, (w, i), {"cycle_idx": i * 10}, where=f"walker {i}", region=IN_REGION), regs[0])
        args, kwargs = decode_call(reg, read_descriptor(regs[0]), regs, copy=True, readonly=True, pool=BlockPool())
        seen.append((args[0].weight, args[0].state["note"], float(args[0].state["x"][0, 0]), args[1], kwargs))
    assert seen == [(1 / (i + 2), f"n{i}", float(i), i, {"cycle_idx": i * 10}) for i in range(5)]
    assert len(reg._made) == 1 and len(reg._parsed) == 1


def test_metadata_that_cannot_be_pickled_names_the_walker():
    w = wemap.Walker({"x": np.zeros(3), "hook": lambda: None}, 1.0)
    with pytest.raises(ValueError, match="walker 7: its metadata cannot be pickled"):
        encode_call(CodecRegistry(), (w,), {}, where="walker 7", region=IN_REGION)


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


def test_user_codecs_come_first_even_when_given_as_a_generator():
    class Mine(Codec):
        name = "mine"

        def accepts(self, obj):
            return type(obj) is wemap.Walker

    reg = CodecRegistry(c for c in [Mine()])
    assert reg.for_object(wemap.Walker({}, 1.0)).name == "mine"
    assert reg.for_object(3).name == "scalar"


def test_layouts_that_refer_into_the_arena_are_not_kept():
    """Their offsets differ walker by walker, so keeping them would only churn the cache."""
    reg = CodecRegistry()
    regs = regions()
    arena = np.zeros(REGION, np.uint8)
    for i in range(3):
        x = np.ndarray((4,), "<f8", buffer=arena, offset=64 * (i + 1))
        enc = encode_call(reg, (wemap.Walker({"x": x}, 1.0),), {}, where=f"walker {i}", region=IN_REGION,
                          local_ref=lambda a, i=i: (ARENA_REGION, 64 * (i + 1)))
        write_call(enc, regs[0])
        args, _ = decode_call(reg, read_descriptor(regs[0]), (*regs, np.zeros(0, np.uint8), arena), copy=False,
                              readonly=True)
        assert np.shares_memory(args[0].state["x"], arena)
    assert reg._made == {} and reg._parsed == {}
