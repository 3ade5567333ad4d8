"""The slot format on its own: plain values and descriptors round trip; malformed ones are refused;
nothing the manager reads from shared memory is unpickled."""

from __future__ import annotations

import ast
import pathlib
import pickle
import sys
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import descriptor
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import wemap
from wemap._arrays import Placement
from wemap.codec import ArrayCodec, Codec, CodecRegistry
from wemap.plain_values import NotPlain, decode_plain, encode_plain
from wemap.shm.calls import decode_call, encode_call
from wemap.slot_format import HEAD, MAGIC, NO_BLOCK, Layouts, dtype_description, unpack, values

BLOCK = 1 << 16
SRC = pathlib.Path(wemap.__file__).parent

plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text()
    | st.binary() | st.complex_numbers(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(plain)
def test_plain_values_round_trip(value):
    assert decode_plain(encode_plain(value)) == value


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_to_a_value_or_a_value_error(raw):
    try:
        decode_plain(raw)
    except ValueError:
        pass


def test_what_is_not_plain_becomes_an_extra_in_its_place():
    extras: list = []
    raw = encode_plain([1.0, {3, 4}, (2, object)], extras)
    assert extras == [{3, 4}, object]
    assert decode_plain(raw, extras) == [1.0, {3, 4}, (2, object)]
    with pytest.raises(NotPlain):
        encode_plain({1, 2})
    with pytest.raises(ValueError, match="extra 1 of 1"):
        decode_plain(raw, extras[:1])


def test_a_refused_value_leaves_nothing_behind_and_threads_encode_apart():
    # one packer per thread is reused: a pack that failed half way, or another thread's pack, must not show
    with pytest.raises(NotPlain):
        encode_plain(["a long string first", {1, 2}])
    assert decode_plain(encode_plain([1.0, 0])) == [1.0, 0]
    barrier = threading.Barrier(4)

    def encode_many(k: int) -> bool:
        barrier.wait()
        return all(decode_plain(encode_plain([k, i, (str(k),) * (i % 5)])) == [k, i, (str(k),) * (i % 5)]
                   for i in range(2000))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch inside a pack's callbacks (tuples), where it could mix them
    try:
        with ThreadPoolExecutor(4) as pool:
            assert all(pool.map(encode_many, range(4)))
    finally:
        sys.setswitchinterval(interval)


def test_a_large_plain_value_leaves_no_buffer_behind():
    # a reused packer's buffer only grows: after a 32 MiB value the thread must not keep 32 MiB more
    encode_plain([1.0, 0])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        raw = encode_plain([b"x" * (32 << 20)])
        assert len(raw) > 32 << 20
        del raw
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1 << 20, f"{kept} bytes kept"


def _call_round_trip(obj, **kwargs):
    reg = CodecRegistry()
    layouts = Layouts(reg.by_name, BLOCK)
    block = np.zeros(BLOCK, np.uint8)
    enc = encode_call(layouts, reg, (obj,), kwargs, where="walker 0", place=Placement(dtype_description))
    for arr, off in zip(enc.copies, enc.offsets):
        np.ndarray(arr.shape, arr.dtype, block, off)[...] = arr
    region = np.zeros(4096, np.uint8)
    desc = descriptor([0, *enc.refs], enc.layout, enc.values, len(enc.extras), 1)
    region[: len(desc)] = np.frombuffer(desc, np.uint8)
    _, blocks, layout, raw, n_extras = unpack(region, layouts, 2)
    assert n_extras == len(enc.extras)
    args, kw = decode_call(layout, values(raw, layout, list(enc.extras)), [(block, 0) for _ in blocks])
    assert kw.keys() == kwargs.keys()
    return args[0]


_dtypes = st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(),
                    hnp.complex_number_dtypes(), hnp.boolean_dtypes(), hnp.datetime64_dtypes(),
                    st.just(np.dtype([("x", "<f8"), ("id", "<i4")])), st.just(np.dtype([("xyz", "<f4", (3,))])))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(_dtypes, hnp.array_shapes(min_dims=0, max_dims=3, max_side=6)))
def test_any_raw_array_round_trips(arr):
    w = wemap.Walker({"a": arr, "note": "kept"}, 0.25)
    out = _call_round_trip(w, n=3)
    assert out.state["a"].dtype == arr.dtype and out.state["a"].shape == arr.shape
    assert out.state["a"].tobytes() == arr.tobytes()
    assert list(out.state) == ["a", "note"] and out.state["note"] == "kept" and out.weight == 0.25


def _descriptor(layout, vals=(None,), blocks=(0,), result=NO_BLOCK, n_extras=0, region=4096) -> np.ndarray:
    out = np.zeros(region, np.uint8)
    desc = descriptor(list(blocks), encode_plain(layout), encode_plain(list(vals)), n_extras, result)
    out[: len(desc)] = np.frombuffer(desc, np.uint8)
    return out


def _entry(*field):
    return 1, (), (("array", (field,)),)


@pytest.mark.parametrize(
    "layout, message",
    [
        (_entry("array", "<f8", (2**40,), 0, 0), "outside its block"),
        (_entry("array", "<f8", (4,), 0, BLOCK - 8), "outside its block"),
        (_entry("array", "<f8", (4,), 5, 0), "block entry 5 of 1"),
        (_entry("array", "zz", (4,), 0, 0), "bad dtype"),
        (_entry("array", "|O", (4,), 0, 0), "Python objects"),
        (_entry("array", "<f8", (-1,), 0, 0), "bad shape"),
        (_entry("array", "<f8"), "2 items, not 5"),
        ((1, (), (("no-such-codec", ()),)), "no-such-codec"),
        ([1, 2], "malformed"),
        ((0, ("k",), (("scalar", ()), ("scalar", ()))), "malformed"),
        ((3, (), (("scalar", ()),)), "malformed"),
        ((0, ("k", "k"), (("scalar", ()), ("scalar", ()))), "malformed"),
    ],
)
def test_a_malformed_descriptor_is_refused_naming_what_is_wrong(layout, message):
    region = _descriptor(layout)
    with pytest.raises(ValueError, match=message):
        _, blocks, lay, raw, _ = unpack(region, Layouts(CodecRegistry().by_name, BLOCK), 4)
        values(raw, lay, [])


def test_blocks_beyond_the_arena_and_truncated_descriptors_are_refused():
    layouts = Layouts(CodecRegistry().by_name, BLOCK)
    layout = _entry("array", "<f8", (4,), 0, 0)
    with pytest.raises(ValueError, match="beyond the arena"):
        unpack(_descriptor(layout, blocks=(9,)), layouts, 4)
    with pytest.raises(ValueError, match="result block 7 of 4"):
        unpack(_descriptor(layout, result=7), layouts, 4)
    region = _descriptor(layout)
    HEAD.pack_into(region, 0, MAGIC, 10_000, NO_BLOCK, 1, 0)
    with pytest.raises(ValueError, match="malformed"):
        unpack(region, layouts, 4)
    _, _, lay, raw, _ = unpack(_descriptor((1, (), (("array", (("v",),)),)), vals=(None,)), layouts, 4)
    with pytest.raises(ValueError, match="1 values, the layout has 2"):
        values(raw, lay, [])


def test_a_pickle_in_a_descriptor_is_data_that_fails_to_parse_never_code():
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled",))

    region = np.zeros(4096, np.uint8)
    evil = pickle.dumps(Boom())
    region[: HEAD.size + len(evil)] = np.frombuffer(HEAD.pack(MAGIC, HEAD.size + len(evil), 0, 0, 0) + evil, np.uint8)
    with pytest.raises(ValueError, match="malformed"):
        unpack(region, Layouts(CodecRegistry().by_name, BLOCK), 4)


def test_the_manager_side_never_unpickles():
    """No pickle.loads (nor load, Unpickler) in the modules that read shared memory."""
    for path in [SRC / "slot_format.py", SRC / "plain_values.py", SRC / "arena.py", *(SRC / "shm").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("loads", "load", "Unpickler"):
                raise AssertionError(f"{path.name}:{node.lineno} calls {node.attr}")


def test_a_layout_is_made_and_parsed_once_and_walkers_keep_their_own_values():
    reg = CodecRegistry()
    layouts = Layouts(reg.by_name, BLOCK)
    seen = []
    raws = set()
    for i in range(5):
        w = wemap.Walker({"x": np.full((3, 3), float(i)), "note": f"n{i}"}, weight=1 / (i + 2))
        seen.append(_call_round_trip(w, cycle_idx=i))
        raws.add(encode_call(layouts, reg, (w,), {}, where="w", place=Placement(dtype_description)).layout)
    assert [(o.weight, o.state["note"], float(o.state["x"][0, 0])) for o in seen] == \
        [(1 / (i + 2), f"n{i}", float(i)) for i in range(5)]
    assert len(raws) == 1


def test_a_codec_that_fails_names_the_walker():
    class Bad(Codec):
        name = "bad"

        def accepts(self, obj):
            return True

        def encode(self, obj):
            raise RuntimeError("no")

    reg = CodecRegistry([Bad()])
    with pytest.raises(ValueError, match="walker 7, argument 0: the 'bad' codec cannot encode it: RuntimeError: no"):
        encode_call(Layouts(reg.by_name, BLOCK), reg, (1,), {}, where="walker 7", place=Placement(dtype_description))


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
