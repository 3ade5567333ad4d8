"""Walker ↔ named numpy arrays + small picklable metadata, and the slot-region format.

A *codec* turns one argument of a segment call (usually a walker) into named arrays plus
small metadata and back. Arrays are written once into a slot region of the shared-memory
segment and read back as zero-copy views; only the metadata (weights, scalars, names,
shapes) is pickled. Built in, chosen by type:

=====================  ===========================================================
``walker``             `wemap.Walker`: every ndarray in ``state`` is an array field
``scalar``             an int, float, bool, str, bytes or None: kept in the descriptor
``wepy_walker``        wepy's ``Walker`` whose state is a ``WalkerState``
``array``              a bare ``numpy.ndarray``
``pickle5``            anything else: pickle protocol 5, buffers out of band, so a
                       contiguous array inside an odd object still travels as raw bytes
=====================  ===========================================================

Region format (input and output regions alike, all offsets from the region start)::

    0      u64 descriptor offset, u64 descriptor length   (first 64-byte line)
    16     input region only: the result block, u64 offset, u64 size, u8 name length,
           the result arena's name (up to 30 bytes); size 0 = no block
    64     array 0 (64-byte aligned) | array 1 | ...
    D      descriptor: pickle of {"args": [...], "kwargs": {...}} where each entry is
           (codec name, codec metadata, [(field, dtype, shape, region, offset), ...])

``region`` is 0 for the input region, 1 for the output region, 2 for the result block (a
piece of the manager's result arena, see `wemap.result_arena`, offsets from its start), 3
for the whole result arena (input regions only, offsets from the arena's start): a result
array that is still a view of the slot's input (a no-op segment) is referenced there, not
copied; a result written straight into its block needs no copy by the manager; an input
array that is a result of an earlier cycle, still in the arena, goes by reference (region 3)
instead of being copied into the slot.
"""

from __future__ import annotations

import functools
import math
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .memcopy import BlockPool, copy_into, copy_of
from .walker import Walker

__all__ = [
    "Codec",
    "WalkerCodec",
    "ScalarCodec",
    "WepyWalkerCodec",
    "ArrayCodec",
    "Pickle5Codec",
    "CodecRegistry",
    "EncodedCall",
    "encode_call",
    "decode_call",
    "write_call",
    "write_split",
    "read_descriptor",
    "pack_target",
    "read_target",
    "ALIGN",
    "IN_REGION",
    "OUT_REGION",
    "RESULT_REGION",
    "ARENA_REGION",
]

ALIGN = 64
_HEAD = struct.Struct("<QQ")
_TARGET = struct.Struct("<QQB")
TARGET_NAME_MAX = ALIGN - _HEAD.size - _TARGET.size
DATA_START = ALIGN

IN_REGION, OUT_REGION, RESULT_REGION, ARENA_REGION = 0, 1, 2, 3


def align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def check_array(where: str, field: str, arr: np.ndarray) -> None:
    """Reject arrays shared memory cannot carry as raw bytes, naming the field."""
    if arr.dtype.hasobject:
        raise ValueError(
            f"{where}: field {field!r} has dtype {arr.dtype} (Python objects), which cannot travel "
            f"through shared memory; use a numeric dtype or keep it out of the walker state"
        )


class Codec:
    """Protocol: ``encode(obj) -> (arrays, meta)`` and ``decode(arrays, meta) -> obj``.

    ``arrays`` maps field names to ndarrays; ``meta`` must be small and picklable. ``encode``
    may be called more than once for one walker in one ``map`` (a walker fed back from the
    result arena is encoded again to refer to it), so it should not have side effects.
    """

    name = "codec"

    def accepts(self, obj: Any) -> bool:
        raise NotImplementedError

    def encode(self, obj: Any) -> tuple[dict[str, np.ndarray], Any]:
        raise NotImplementedError

    def decode(self, arrays: dict[str, np.ndarray], meta: Any) -> Any:
        raise NotImplementedError


def _split_state(state: dict) -> tuple[dict[str, np.ndarray], dict]:
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    rest = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    return arrays, rest


_SCALARS = frozenset({int, float, bool, str, bytes, complex, type(None)})


class ScalarCodec(Codec):
    """Plain scalars (a segment length, a cycle index) ride in the descriptor as they are."""

    name = "scalar"

    def accepts(self, obj: Any) -> bool:
        return type(obj) in _SCALARS

    def encode(self, obj: Any) -> tuple[dict[str, np.ndarray], Any]:
        return {}, obj

    def decode(self, arrays: dict[str, np.ndarray], meta: Any) -> Any:
        return meta


class WalkerCodec(Codec):
    """`wemap.Walker`: arrays of ``state`` become fields; scalars and the weight go in meta."""

    name = "walker"

    def accepts(self, obj: Any) -> bool:
        return type(obj) is Walker

    def encode(self, obj: Walker) -> tuple[dict[str, np.ndarray], Any]:
        arrays, rest = _split_state(obj.state)
        return arrays, (obj.weight, rest, list(obj.state))

    def decode(self, arrays: dict[str, np.ndarray], meta: Any) -> Walker:
        weight, rest, order = meta
        merged = {**rest, **arrays}
        return Walker({k: merged[k] for k in order}, weight)


class WepyWalkerCodec(Codec):
    """wepy's ``Walker`` with a plain ``WalkerState`` (what ``.dict()`` would give, without its deep copy)."""

    name = "wepy_walker"

    def __init__(self) -> None:
        try:
            from wepy.walker import Walker as WepyWalker
            from wepy.walker import WalkerState
        except ImportError:  # wepy is optional
            self._types = None
        else:
            self._types = (WepyWalker, WalkerState)

    def accepts(self, obj: Any) -> bool:
        if self._types is None:
            return False
        walker_t, state_t = self._types
        return type(obj) is walker_t and type(obj.state) is state_t and isinstance(getattr(obj.state, "_data", None), dict)

    def encode(self, obj: Any) -> tuple[dict[str, np.ndarray], Any]:
        data = obj.state._data
        arrays, rest = _split_state(data)
        return arrays, (obj.weight, rest, list(data))

    def decode(self, arrays: dict[str, np.ndarray], meta: Any) -> Any:
        walker_t, state_t = self._types
        weight, rest, order = meta
        merged = {**rest, **arrays}
        return walker_t(state_t(**{k: merged[k] for k in order}), weight)


class ArrayCodec(Codec):
    name = "array"

    def accepts(self, obj: Any) -> bool:
        return type(obj) is np.ndarray

    def encode(self, obj: np.ndarray) -> tuple[dict[str, np.ndarray], Any]:
        return {"array": obj}, None

    def decode(self, arrays: dict[str, np.ndarray], meta: Any) -> np.ndarray:
        return arrays["array"]


class Pickle5Codec(Codec):
    """Fallback for anything else: in-band pickle for small things, contiguous buffers out of band."""

    name = "pickle5"

    def accepts(self, obj: Any) -> bool:
        return True

    def encode(self, obj: Any) -> tuple[dict[str, np.ndarray], Any]:
        buffers: list[pickle.PickleBuffer] = []
        data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        arrays = {f"buffer{i}": np.frombuffer(b.raw(), dtype=np.uint8) for i, b in enumerate(buffers)}
        return arrays, data

    def decode(self, arrays: dict[str, np.ndarray], meta: Any) -> Any:
        return pickle.loads(meta, buffers=[arrays[f"buffer{i}"] for i in range(len(arrays))])


class CodecRegistry:
    """Picks a codec per object: user codecs first, then the built-ins, pickle5 last."""

    def __init__(self, extra: list[Codec] | tuple[Codec, ...] = ()) -> None:
        self.codecs: list[Codec] = [*extra, WalkerCodec(), ScalarCodec(), WepyWalkerCodec(), ArrayCodec(),
                                    Pickle5Codec()]
        self.by_name: dict[str, Codec] = {}
        for c in self.codecs:
            if c.name in self.by_name:
                raise ValueError(
                    f"codec name {c.name!r} is used by both {type(self.by_name[c.name]).__name__} and "
                    f"{type(c).__name__}: give each codec a unique `name` (the built-ins are "
                    f"walker, scalar, wepy_walker, array, pickle5)")
            self.by_name[c.name] = c

    def for_object(self, obj: Any) -> Codec:
        for c in self.codecs:
            if c.accepts(obj):
                return c
        raise AssertionError("pickle5 accepts everything")


@dataclass
class EncodedCall:
    """One call's arguments, encoded but not yet written: its size is known before any write."""

    arrays: list[np.ndarray]  # in layout order, matched with the offsets in the entries
    offsets: list[int]
    descriptor: bytes
    nbytes: int  # arrays and descriptor, laid out from the region start
    largest_field: tuple[str, int]  # (name, bytes) of the biggest array, for error messages
    data_end: int  # end of the last array written into the region
    array_bytes: int  # every array, referenced ones too, laid out from 0: what a result block must hold


class _Layout:
    """Running state while one call's values are laid out in a region."""

    __slots__ = ("cursor", "arrays", "offsets", "region", "local_ref", "largest", "total")

    def __init__(self, region: int, local_ref, start: int = DATA_START) -> None:
        self.cursor = start
        self.arrays: list[np.ndarray] = []
        self.offsets: list[int] = []
        self.region = region
        self.local_ref = local_ref
        self.largest = ("", 0)
        self.total = 0

    def value(self, reg: CodecRegistry, where: str, value: Any) -> tuple:
        codec = reg.for_object(value)
        try:
            named, meta = codec.encode(value)
        except Exception as exc:  # a user codec's bug or an object that refuses to pickle: name the walker
            raise ValueError(f"{where}: the {codec.name!r} codec cannot encode it: {type(exc).__name__}: {exc}") from exc
        fields = []
        for field, arr in named.items():
            if arr.dtype.hasobject:
                check_array(where, field, arr)
            nbytes = arr.nbytes
            if nbytes > self.largest[1]:
                self.largest = (field, nbytes)
            self.total = (self.total + nbytes + ALIGN - 1) & ~(ALIGN - 1)
            ref = self.local_ref(arr) if self.local_ref is not None else None
            if ref is not None:
                region, offset = ref
            else:
                region, offset = self.region, self.cursor
                self.arrays.append(arr)
                self.offsets.append(offset)
                self.cursor = (offset + nbytes + ALIGN - 1) & ~(ALIGN - 1)
            dt = arr.dtype
            fields.append((field, dt.str if dt.fields is None else dt, arr.shape, region, offset))
        return (codec.name, meta, fields)


def encode_call(
    reg: CodecRegistry,
    args: tuple,
    kwargs: dict,
    *,
    where: str,
    region: int,
    local_ref: Callable[[np.ndarray], tuple[int, int] | None] | None = None,
    start: int = DATA_START,
) -> EncodedCall:
    """Lay out ``args``/``kwargs`` for a region without writing anything yet.

    Arrays are laid out from ``start`` (0 for a result block, which has no head).
    Raises ``ValueError`` naming ``where`` and the field for anything the codecs can't carry.
    """
    lay = _Layout(region, local_ref, start)
    e_args = [lay.value(reg, f"{where}, argument {i}", a) for i, a in enumerate(args)]
    e_kwargs = {k: lay.value(reg, f"{where}, argument {k!r}", v) for k, v in kwargs.items()}
    descriptor = pickle.dumps({"args": e_args, "kwargs": e_kwargs}, protocol=5)
    return EncodedCall(lay.arrays, lay.offsets, descriptor, lay.cursor + len(descriptor), lay.largest, lay.cursor,
                       lay.total)


def _write_arrays(enc: EncodedCall, region: np.ndarray) -> None:
    for arr, off in zip(enc.arrays, enc.offsets):
        copy_into(np.ndarray(arr.shape, arr.dtype, buffer=region, offset=off), arr)


def write_call(enc: EncodedCall, region: np.ndarray, target: bytes | None = None) -> None:
    """Copy the arrays and descriptor into ``region`` (a uint8 view): the one copy a walker gets.

    ``target`` (from `pack_target`, input regions only) names the block the result goes to.
    """
    _write_arrays(enc, region)
    d_off = enc.nbytes - len(enc.descriptor)
    region[d_off : enc.nbytes] = np.frombuffer(enc.descriptor, dtype=np.uint8)
    head = _HEAD.pack(d_off, len(enc.descriptor)) + (target or _NO_TARGET)
    region[: len(head)] = np.frombuffer(head, dtype=np.uint8)


def write_split(enc: EncodedCall, block: np.ndarray, region: np.ndarray) -> None:
    """Arrays laid out from 0 (``start=0``) into ``block``, the descriptor into ``region``.

    The caller checks first that ``enc.data_end <= block.nbytes`` and that the descriptor
    fits ``region`` after its head.
    """
    _write_arrays(enc, block)
    n = len(enc.descriptor)
    region[DATA_START : DATA_START + n] = np.frombuffer(enc.descriptor, dtype=np.uint8)
    region[: _HEAD.size] = np.frombuffer(_HEAD.pack(DATA_START, n), dtype=np.uint8)


def pack_target(name: str, offset: int, size: int) -> bytes:
    """The input-region field that tells a worker where to write the walker's result arrays."""
    raw = name.encode()
    if len(raw) > TARGET_NAME_MAX:
        raise ValueError(f"result arena name {name!r} is longer than {TARGET_NAME_MAX} bytes")
    return _TARGET.pack(offset, size, len(raw)) + raw


_NO_TARGET = _TARGET.pack(0, 0, 0)


def read_target(region: np.ndarray) -> tuple[str, int, int] | None:
    """(arena name, block offset, block size) written by `pack_target`, or None when there is none."""
    raw = region[_HEAD.size : ALIGN].tobytes()
    offset, size, n = _TARGET.unpack_from(raw)
    if size == 0:
        return None
    if n > TARGET_NAME_MAX:
        raise ValueError(f"result block name length {n} is out of range")
    return raw[_TARGET.size : _TARGET.size + n].decode(), offset, size


def read_descriptor(region: np.ndarray) -> dict:
    d_off, d_len = _HEAD.unpack(region[:16].tobytes())
    if d_off + d_len > region.nbytes or d_off < DATA_START:
        raise ValueError(f"slot descriptor out of range (offset {d_off}, length {d_len}, region {region.nbytes} bytes)")
    return pickle.loads(region[d_off : d_off + d_len])


def decode_call(
    reg: CodecRegistry,
    desc: dict,
    regions: tuple[np.ndarray, ...],
    *,
    copy: bool,
    readonly: bool,
    pool: BlockPool | None = None,
) -> tuple[list, dict]:
    """Rebuild the arguments from a descriptor: zero-copy views, or one copy with ``copy=True``.

    ``regions`` are the input and output regions, and the result block when there is one:
    fields in the result block are already the caller's own memory, so they are returned
    as writable views whatever ``copy`` and ``readonly`` say. With a `BlockPool`, the
    copies of one call are carved from one reusable block.
    """
    try:
        entries = [*desc["args"], *desc["kwargs"].values()]
        checked = [_check_entry(reg, e, regions) for e in entries]
    except (TypeError, AttributeError, KeyError) as exc:
        raise ValueError(f"malformed slot descriptor ({type(exc).__name__}: {exc})") from exc
    block, cursor = None, 0
    if copy and pool is not None:
        total = sum(align(f[4]) for _, fields in checked for f in fields if f[5] != RESULT_REGION)
        if total >= pool.MIN_BYTES:
            block = pool.take(total)

    def value(entry, fields):
        nonlocal cursor
        name, meta, _ = entry
        arrays = {}
        for field, dt, shape, view, nbytes, region in fields:
            if region == RESULT_REGION:
                pass  # already the caller's memory: a writable view
            elif block is not None:
                dst = np.ndarray(shape, dt, buffer=block, offset=cursor)
                copy_into(dst, view)
                cursor = align(cursor + nbytes)
                view = dst
            elif copy:
                view = copy_of(view)
            elif readonly:
                view.flags.writeable = False
            arrays[field] = view
        return reg.by_name[name].decode(arrays, meta)

    values = [value(e, fields) for e, (_, fields) in zip(entries, checked)]
    n_args = len(desc["args"])
    return values[:n_args], dict(zip(desc["kwargs"], values[n_args:]))


def _check_entry(reg: CodecRegistry, entry: tuple, regions: tuple[np.ndarray, ...]) -> tuple[str, list]:
    """Validate one descriptor entry against the regions: ``ValueError`` naming what is wrong, before any copy.

    Returns (codec name, [(field, dtype, shape, view, nbytes, region), ...]) with views into the regions.
    """
    name, _, fields = entry
    if name not in reg.by_name:
        raise ValueError(f"the descriptor names codec {name!r}, which this process does not have")
    out = []
    for field, dtype, shape, region, offset in fields:
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise ValueError(f"field {field!r} has a bad shape {shape!r}")
        if not (type(region) is int and 0 <= region < len(regions)):
            raise ValueError(f"field {field!r} is in region {region!r}, which this slot does not have")
        try:
            dt = _dtype(dtype)
        except TypeError as exc:
            raise ValueError(f"field {field!r} has a bad dtype {dtype!r}") from exc
        if dt.hasobject:
            raise ValueError(f"field {field!r} claims dtype {dt}, which holds Python objects, not raw bytes")
        nbytes = math.prod(shape) * dt.itemsize
        buf = regions[region]
        lowest = 0 if region >= RESULT_REGION else DATA_START  # blocks and the arena have no head
        if type(offset) is not int or offset < lowest or offset + nbytes > buf.nbytes:
            raise ValueError(f"field {field!r} lies outside its slot region (offset {offset}, {nbytes} bytes)")
        out.append((field, dt, shape, np.ndarray(shape, dt, buffer=buf, offset=offset), nbytes, region))
    return name, out


@functools.lru_cache(maxsize=256)
def _dtype(descr: str | np.dtype) -> np.dtype:
    return np.dtype(descr)
