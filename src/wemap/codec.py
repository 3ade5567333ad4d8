"""Walker ↔ named numpy arrays + small picklable metadata, and the slot-region format.

A *codec* turns one argument of a segment call (usually a walker) into named arrays plus
small metadata and back. Arrays are written once into a slot region of the shared-memory
segment and read back as zero-copy views; only the metadata (weights, scalars, names,
shapes) is pickled. Built in, chosen by type:

=====================  ===========================================================
``walker``             `wemap.Walker`: every plain ndarray in ``state`` is an array field (a
                       subclass, such as a masked array, travels pickled, whole)
``scalar``             an int, float, bool, str, bytes or None: kept in the descriptor
``wepy_walker``        wepy's ``Walker`` whose state is a ``WalkerState``
``openmm_walker``      wepy's ``OpenMMWalker`` over a `wemap.openmm.ArrayState` (lazy: see `LazyCodec`)
``array``              a bare ``numpy.ndarray``
``pickle5``            anything else: pickle protocol 5, buffers out of band, so a
                       contiguous array inside an odd object still travels as raw bytes
=====================  ===========================================================

Region format (input and output regions alike, all offsets from the region start)::

    0      u64 descriptor offset, u64 descriptor length   (first 64-byte line)
    16     input region only: the result block, u64 offset, u64 size, u8 name length,
           the result arena's name (up to 30 bytes); size 0 = no block
    64     input region only: the walker's input block, u64 offset, u64 size, in the same
           arena; size 0 = none. When there is one, the walker is not in this region: it was
           written (head, arrays, descriptor, in this same format) into that block instead
    128    array 0 (64-byte aligned) | array 1 | ...
    D      descriptor: u32 length of the layout, the layout, the metadata. The layout is a
           pickle of (number of positional arguments, keyword names, [(codec name,
           [(field, dtype, shape, region, offset), ...]), ...]), one entry per argument;
           the metadata a pickle of [codec metadata, ...] in the same order.

The layout is what stays the same from cycle to cycle (a slot's walkers have the same fields
at the same offsets); the metadata is what changes (weights, scalars). So each process parses
and validates a layout once (`CodecRegistry.layout`, cached by its bytes) and then only
unpickles the few bytes of metadata and checks the fields' extents against its regions.

``region`` is 0 for the input region, 1 for the output region, 2 for the result block (a
piece of the manager's result arena, see `wemap.result_arena`, offsets from its start), 3
for the whole result arena (input regions only, offsets from the arena's start): a result
array that is still a view of the slot's input (a no-op segment) is referenced there, not
copied; a result written straight into its block needs no copy by the manager; an input
array that is a result of an earlier cycle, still in the arena, goes by reference (region 3)
instead of being copied into the slot. A walker with an input block has that block as its
region 0, for the worker and for the manager reading the result: a result array still in
its input (a no-op) is then already in memory the manager can hand out, and nobody copies it.
"""

from __future__ import annotations

import functools
import importlib
import math
import pickle
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

try:
    from ._ring import copy_arrays
except ImportError:  # no compiled ring (a broken build): the pure-Python mappers import this module too
    copy_arrays = None
from .memcopy import PARALLEL_MIN_BYTES, BlockPool, copy_into, copy_of
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
    "Descriptor",
    "CallLayout",
    "pack_target",
    "read_target",
    "pack_input_block",
    "read_input_block",
    "write_pointer",
    "ALIGN",
    "IN_REGION",
    "OUT_REGION",
    "RESULT_REGION",
    "ARENA_REGION",
]

ALIGN = 64
_HEAD = struct.Struct("<QQ")
_LAYOUT_LEN = struct.Struct("<I")
_TARGET = struct.Struct("<QQB")
_INPUT_BLOCK = struct.Struct("<QQ")
#: layouts a registry keeps parsed (and layout bytes it keeps made): a few per slot shape is plenty
LAYOUT_CACHE_MAX = 512
TARGET_NAME_MAX = ALIGN - _HEAD.size - _TARGET.size
INPUT_BLOCK_AT = ALIGN
DATA_START = 2 * ALIGN

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
    """A state's plain ndarrays (array fields) apart from the rest (pickled in the metadata).

    Subclasses (masked arrays, ``np.matrix``, ``np.memmap``, a subclass with attributes of its own)
    are more than their bytes: they travel pickled, as `WorkerMapper` sends them, and come back as
    the same type with their mask or attributes.
    """
    arrays, rest = {}, {}
    for k, v in state.items():
        if type(v) is np.ndarray:
            arrays[k] = v
        else:
            rest[k] = v
    return arrays, rest


def _merge_state(arrays: dict[str, np.ndarray], rest: dict, order: list | None) -> dict:
    """The state `_split_state` split, in its order (``None``: it held arrays only, in ``arrays``' order)."""
    if order is None:
        return arrays
    merged = {**rest, **arrays}
    return {k: merged[k] for k in order}


def _split_meta(state: dict, weight: Any) -> tuple[dict[str, np.ndarray], tuple]:
    arrays, rest = _split_state(state)
    return arrays, (weight, rest, list(state) if rest else None)


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
        return _split_meta(obj.state, obj.weight)

    def decode(self, arrays: dict[str, np.ndarray], meta: Any) -> Walker:
        weight, rest, order = meta
        return Walker(_merge_state(arrays, rest, order), weight)


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
        return _split_meta(obj.state._data, obj.weight)

    def decode(self, arrays: dict[str, np.ndarray], meta: Any) -> Any:
        walker_t, state_t = self._types
        weight, rest, order = meta
        return walker_t(state_t(**_merge_state(arrays, rest, order)), weight)


class LazyCodec(Codec):
    """A codec for an optional package's walker type, imported only once that type can exist.

    ``accepts`` is False while module ``trigger`` is not imported (no such object exists yet);
    after that, and for decoding, ``target`` (``"module:Class"``) is imported and does the work.
    """

    def __init__(self, name: str, trigger: str, target: str) -> None:
        self.name, self._trigger, self._target = name, trigger, target
        self._codec: Codec | None = None

    def _load(self) -> Codec:
        if self._codec is None:
            module, _, cls = self._target.partition(":")
            self._codec = getattr(importlib.import_module(module), cls)()
        return self._codec

    def accepts(self, obj: Any) -> bool:
        if self._codec is None and self._trigger not in sys.modules:
            return False
        return self._load().accepts(obj)

    def encode(self, obj: Any) -> tuple[dict[str, np.ndarray], Any]:
        return self._load().encode(obj)

    def decode(self, arrays: dict[str, np.ndarray], meta: Any) -> Any:
        return self._load().decode(arrays, meta)


#: (name, trigger, target) of the `LazyCodec` built-ins: wepy's OpenMMWalker over a wemap ArrayState
LAZY_CODECS = (("openmm_walker", "wepy.runners.openmm", "wemap.openmm.wepy_walkers:OpenMMWalkerCodec"),)


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
    """Picks a codec per object: user codecs first, then the built-ins, pickle5 last.

    It also keeps the layouts it has parsed and made (see the module docstring), so a slot's
    walkers cost one unpickle of their metadata each, not a parse and a validation.
    """

    def __init__(self, extra: list[Codec] | tuple[Codec, ...] = ()) -> None:
        extra = tuple(extra)  # a generator would be used up by the first of the two uses below
        walker, scalar, array = WalkerCodec(), ScalarCodec(), ArrayCodec()
        self.codecs: list[Codec] = [*extra, walker, scalar, WepyWalkerCodec(),
                                    *(LazyCodec(*c) for c in LAZY_CODECS), array, Pickle5Codec()]
        self._extra = extra
        # the built-ins that accept by type alone, as for_object's loop would pick them after the user's codecs
        self._by_type: dict[type, Codec] = {Walker: walker, np.ndarray: array, **dict.fromkeys(_SCALARS, scalar)}
        self.by_name: dict[str, Codec] = {}
        for c in self.codecs:
            if c.name in self.by_name:
                raise ValueError(
                    f"codec name {c.name!r} is used by both {type(self.by_name[c.name]).__name__} and "
                    f"{type(c).__name__}: give each codec a unique `name` (the built-ins are "
                    f"walker, scalar, wepy_walker, openmm_walker, array, pickle5)")
            self.by_name[c.name] = c
        self._parsed: dict[bytes, CallLayout] = {}
        self._made: dict[tuple, bytes] = {}

    def for_object(self, obj: Any) -> Codec:
        for c in self._extra:
            if c.accepts(obj):
                return c
        c = self._by_type.get(type(obj))
        if c is not None:
            return c
        for c in self.codecs:
            if c.accepts(obj):
                return c
        raise AssertionError("pickle5 accepts everything")

    def layout(self, raw: bytes) -> CallLayout:
        """The parsed, validated layout pickled in ``raw``; ``ValueError`` naming what is wrong."""
        lay = self._parsed.get(raw)
        if lay is None:
            lay = CallLayout.parse(self, raw)
            if ARENA_REGION not in lay.regions:  # offsets into the arena differ walker by walker: not kept
                _remember(self._parsed, raw, lay)
        return lay

    def layout_bytes(self, key: tuple, keep: bool = True) -> bytes:
        """``key`` (a layout as `encode_call` builds it) pickled, made once per distinct layout
        (``keep=False``: one that will not come again, such as references into the arena)."""
        raw = self._made.get(key)
        if raw is None:
            raw = pickle.dumps(key, protocol=5)
            if keep:
                _remember(self._made, key, raw)
        return raw


def _remember(cache: dict, key: Any, value: Any) -> None:
    """Keep ``value`` under ``key``, starting afresh once ``LAYOUT_CACHE_MAX`` are kept (a slot's
    layouts recur every cycle, so they are back after one)."""
    if len(cache) >= LAYOUT_CACHE_MAX:
        cache.clear()
    cache[key] = value


#: one field of a parsed layout: (name, dtype, shape, region, offset, nbytes, offset in a copy block)
Field = tuple


class CallLayout:
    """Where one call's arrays lie: parsed and checked once per distinct layout, then reused.

    Everything here follows from the layout's bytes alone; what depends on the regions of a
    particular slot (whether each field lies inside them) is `check`, a few comparisons.
    """

    __slots__ = ("n_args", "kw_names", "entries", "regions", "copy_bytes", "_extents")

    def __init__(self, n_args: int, kw_names: tuple[str, ...], entries: tuple[tuple[Codec, tuple[Field, ...]], ...],
                 copy_bytes: int) -> None:
        self.n_args, self.kw_names, self.entries = n_args, kw_names, entries
        self.copy_bytes = copy_bytes  # a block that takes a copy of every field not in a result block
        extents: dict[int, tuple[int, str, int, int]] = {}  # region -> the field reaching furthest into it
        for _, fields in entries:
            for name, _, _, region, offset, nbytes, _ in fields:
                if region not in extents or offset + nbytes > extents[region][0]:
                    extents[region] = (offset + nbytes, name, offset, nbytes)
        self.regions = frozenset(extents)
        self._extents = tuple((region, *e) for region, e in sorted(extents.items()))

    @classmethod
    def parse(cls, reg: CodecRegistry, raw: bytes) -> CallLayout:
        try:
            n_args, kw_names, raw_entries = pickle.loads(raw)
            raw_entries = [(name, list(fields)) for name, fields in raw_entries]
            if not (type(n_args) is int and type(kw_names) is tuple and 0 <= n_args == len(raw_entries) - len(kw_names)
                    and all(type(k) is str for k in kw_names) and len(set(kw_names)) == len(kw_names)
                    and all(type(name) is str for name, _ in raw_entries)):
                raise ValueError(f"{n_args!r} positional arguments, keywords {kw_names!r} and codecs "
                                 f"{[name for name, _ in raw_entries]!r} for {len(raw_entries)} entries")
            raw_fields = [[tuple(f) for f in fields] for _, fields in raw_entries]
            for fields in raw_fields:
                for f in fields:
                    if len(f) != 5:
                        raise ValueError(f"a field of {len(f)} items, not 5")
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, pickle.UnpicklingError, EOFError) as exc:
            raise ValueError(f"malformed slot descriptor ({type(exc).__name__}: {exc})") from exc
        cursor = 0
        entries = []
        for (name, _), fields in zip(raw_entries, raw_fields):
            if name not in reg.by_name:
                raise ValueError(f"the descriptor names codec {name!r}, which this process does not have")
            checked = []
            for field, dtype, shape, region, offset in fields:
                if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
                    raise ValueError(f"field {field!r} has a bad shape {shape!r}")
                if not (type(region) is int and 0 <= region <= ARENA_REGION):
                    raise ValueError(f"field {field!r} is in region {region!r}, which this slot does not have")
                try:
                    dt = _dtype(dtype)
                except TypeError as exc:
                    raise ValueError(f"field {field!r} has a bad dtype {dtype!r}") from exc
                if dt.hasobject:
                    raise ValueError(f"field {field!r} claims dtype {dt}, which holds Python objects, not raw bytes")
                nbytes = math.prod(shape) * dt.itemsize
                lowest = 0 if region >= RESULT_REGION else DATA_START  # blocks and the arena have no head
                if type(offset) is not int or offset < lowest:
                    raise ValueError(f"field {field!r} lies outside its slot region (offset {offset}, {nbytes} bytes)")
                checked.append((field, dt, shape, region, offset, nbytes, cursor))
                if region != RESULT_REGION:  # copies of the others are carved from one block, in order
                    cursor = align(cursor + nbytes)
            entries.append((reg.by_name[name], tuple(checked)))
        return cls(n_args, kw_names, tuple(entries), cursor)

    def check(self, regions: tuple[np.ndarray, ...]) -> None:
        """``ValueError`` naming the first field that does not lie inside ``regions``."""
        n = len(regions)
        for region, end, name, offset, nbytes in self._extents:
            if region >= n:
                raise ValueError(f"field {name!r} is in region {region!r}, which this slot does not have")
            if end > regions[region].nbytes:
                raise ValueError(f"field {name!r} lies outside its slot region (offset {offset}, {nbytes} bytes)")


class Descriptor(NamedTuple):
    """A region's descriptor as read, still undecoded: the layout's bytes and the metadata's."""

    layout: bytes
    meta: bytes


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

    __slots__ = ("cursor", "arrays", "offsets", "region", "local_ref", "largest", "total", "in_arena")

    def __init__(self, region: int, local_ref, start: int = DATA_START) -> None:
        self.cursor = start
        self.arrays: list[np.ndarray] = []
        self.offsets: list[int] = []
        self.region = region
        self.local_ref = local_ref
        self.largest = ("", 0)
        self.total = 0
        self.in_arena = False  # a field refers into the whole arena: an offset no other walker has

    def value(self, reg: CodecRegistry, where: str, which: int | str, value: Any) -> tuple[str, Any, tuple]:
        """Lay out argument ``which`` (a position or a keyword) of the call ``where`` names."""
        codec = reg.for_object(value)
        try:
            named, meta = codec.encode(value)
        except Exception as exc:  # a user codec's bug or an object that refuses to pickle: name the walker
            raise ValueError(f"{_argument(where, which)}: the {codec.name!r} codec cannot encode it: "
                             f"{type(exc).__name__}: {exc}") from exc
        fields = []
        # the running state in locals, written back once: attribute traffic is most of this loop's cost
        largest, total, cursor, local_ref = self.largest, self.total, self.cursor, self.local_ref
        arrays, offsets = self.arrays, self.offsets
        for field, arr in named.items():
            dt = arr.dtype
            if dt.hasobject:
                check_array(_argument(where, which), field, arr)
            nbytes = arr.nbytes
            if nbytes > largest[1]:
                largest = (field, nbytes)
            total = (total + nbytes + ALIGN - 1) & ~(ALIGN - 1)
            ref = local_ref(arr) if local_ref is not None else None
            if ref is not None:
                region, offset = ref
                self.in_arena = self.in_arena or region == ARENA_REGION
            else:
                region, offset = self.region, cursor
                arrays.append(arr)
                offsets.append(offset)
                cursor = (offset + nbytes + ALIGN - 1) & ~(ALIGN - 1)
            fields.append((field, _describe(dt), arr.shape, region, offset))
        self.largest, self.total, self.cursor = largest, total, cursor
        return codec.name, meta, tuple(fields)


def _argument(where: str, which: int | str) -> str:
    return f"{where}, argument {which}" if type(which) is int else f"{where}, argument {which!r}"


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
    entries = [lay.value(reg, where, i, a) for i, a in enumerate(args)]
    entries += [lay.value(reg, where, k, v) for k, v in kwargs.items()]
    try:
        meta = pickle.dumps([m for _, m, _ in entries], protocol=5)
    except Exception as exc:  # metadata that refuses to pickle (a lambda in a walker's state): name the walker
        raise ValueError(f"{where}: its metadata cannot be pickled: {type(exc).__name__}: {exc}") from exc
    layout = reg.layout_bytes((len(args), tuple(kwargs), tuple((name, fields) for name, _, fields in entries)),
                              keep=not lay.in_arena)
    descriptor = _LAYOUT_LEN.pack(len(layout)) + layout + meta
    return EncodedCall(lay.arrays, lay.offsets, descriptor, lay.cursor + len(descriptor), lay.largest, lay.cursor,
                       lay.total)


def _write_arrays(enc: EncodedCall, region: np.ndarray) -> None:
    """The arrays of ``enc`` into ``region`` at their offsets.

    One call into the ring's binding copies them all when none is large enough for the threaded
    copy (`copy_into`) and all are C-contiguous: that saves a view and a ``copyto`` call per array.
    """
    if copy_arrays is not None and enc.largest_field[1] < PARALLEL_MIN_BYTES:
        try:
            copy_arrays(region, enc.offsets, enc.arrays)
            return
        except BufferError:  # an array that is not C-contiguous: np.copyto lays it out
            pass
    for arr, off in zip(enc.arrays, enc.offsets):
        copy_into(np.ndarray(arr.shape, arr.dtype, region, off), arr)


def write_call(enc: EncodedCall, region: np.ndarray, target: bytes | None = None) -> None:
    """Copy the arrays and descriptor into ``region`` (a uint8 view): the one copy a walker gets.

    ``target`` (from `pack_target`, input regions only) names the block the result goes to.
    """
    _write_arrays(enc, region)
    d_off = enc.nbytes - len(enc.descriptor)
    raw = memoryview(region)
    raw[d_off : enc.nbytes] = enc.descriptor
    target = target or _NO_TARGET
    raw[_HEAD.size : _HEAD.size + len(target)] = target
    raw[INPUT_BLOCK_AT : INPUT_BLOCK_AT + _INPUT_BLOCK.size] = _NO_INPUT_BLOCK
    _HEAD.pack_into(region, 0, d_off, len(enc.descriptor))


def write_pointer(region: np.ndarray, target: bytes, input_block: bytes) -> None:
    """Only a head into ``region``: the walker is in the input block ``input_block`` names (from
    `pack_input_block`, written there by `write_call`), its result goes to ``target``."""
    raw = memoryview(region)
    raw[_HEAD.size : _HEAD.size + len(target)] = target
    raw[INPUT_BLOCK_AT : INPUT_BLOCK_AT + _INPUT_BLOCK.size] = input_block
    _HEAD.pack_into(region, 0, 0, 0)


def write_split(enc: EncodedCall, block: np.ndarray, region: np.ndarray) -> None:
    """Arrays laid out from 0 (``start=0``) into ``block``, the descriptor into ``region``.

    The caller checks first that ``enc.data_end <= block.nbytes`` and that the descriptor
    fits ``region`` after its head.
    """
    _write_arrays(enc, block)
    n = len(enc.descriptor)
    memoryview(region)[DATA_START : DATA_START + n] = enc.descriptor
    _HEAD.pack_into(region, 0, DATA_START, n)


def pack_target(name: str, offset: int, size: int) -> bytes:
    """The input-region field that tells a worker where to write the walker's result arrays."""
    raw = name.encode()
    if len(raw) > TARGET_NAME_MAX:
        raise ValueError(f"result arena name {name!r} is longer than {TARGET_NAME_MAX} bytes")
    return _TARGET.pack(offset, size, len(raw)) + raw


_NO_TARGET = _TARGET.pack(0, 0, 0)


def pack_input_block(offset: int, size: int) -> bytes:
    """The input-region field that tells a worker its walker is in the arena block at ``offset``."""
    return _INPUT_BLOCK.pack(offset, size)


_NO_INPUT_BLOCK = _INPUT_BLOCK.pack(0, 0)


def read_input_block(region: np.ndarray) -> tuple[int, int] | None:
    """(offset, size) of the walker's input block in the result arena, or None when it is in ``region``."""
    offset, size = _INPUT_BLOCK.unpack_from(region, INPUT_BLOCK_AT)
    return (offset, size) if size else None


def read_target(region: np.ndarray) -> tuple[str, int, int] | None:
    """(arena name, block offset, block size) written by `pack_target`, or None when there is none."""
    offset, size, n = _TARGET.unpack_from(region, _HEAD.size)
    if size == 0:
        return None
    if n > TARGET_NAME_MAX:
        raise ValueError(f"result block name length {n} is out of range")
    start = _HEAD.size + _TARGET.size
    return region[start : start + n].tobytes().decode(), offset, size


def read_descriptor(region: np.ndarray) -> Descriptor:
    """The descriptor `write_call` or `write_split` put in ``region``, split into layout and metadata."""
    d_off, d_len = _HEAD.unpack_from(region)
    if d_off + d_len > region.nbytes or d_off < DATA_START or d_len < _LAYOUT_LEN.size:
        raise ValueError(f"slot descriptor out of range (offset {d_off}, length {d_len}, region {region.nbytes} bytes)")
    raw = region[d_off : d_off + d_len].tobytes()
    (n,) = _LAYOUT_LEN.unpack_from(raw)
    end = _LAYOUT_LEN.size + n
    if end > d_len:
        raise ValueError(f"slot descriptor's layout ({n} bytes) runs past the descriptor ({d_len} bytes)")
    return Descriptor(raw[_LAYOUT_LEN.size : end], raw[end:])


def decode_call(
    reg: CodecRegistry,
    desc: Descriptor,
    regions: tuple[np.ndarray, ...],
    *,
    copy: bool,
    readonly: bool,
    pool: BlockPool | None = None,
    layout: CallLayout | None = None,
    owned_input: bool = False,
) -> tuple[list, dict]:
    """Rebuild the arguments from a descriptor: zero-copy views, or one copy with ``copy=True``.

    ``regions`` are the input and output regions, and the result block when there is one:
    fields in the result block are already the caller's own memory, so they are returned
    as writable views whatever ``copy`` and ``readonly`` say; with ``owned_input`` (the input
    region is the walker's input block) so are fields in the input region. With a `BlockPool`, the
    copies of one call are carved from one reusable block. Everything is checked before
    anything is copied. ``layout``: ``desc``'s, when the caller has parsed it already.
    """
    lay = layout if layout is not None else reg.layout(desc.layout)
    metas = pickle.loads(desc.meta)
    if type(metas) is not list or len(metas) != len(lay.entries):
        got = f"{len(metas)} values" if type(metas) is list else f"a {type(metas).__name__}"
        raise ValueError(f"malformed slot descriptor (metadata: {got}, the layout has {len(lay.entries)} entries)")
    lay.check(regions)
    block = None
    # a copy block is laid out for every field outside the result block: with the input owned too,
    # what is left to copy (a result that overflowed into the output region) is plain copies
    if copy and pool is not None and lay.copy_bytes >= pool.MIN_BYTES and not owned_input:
        block = pool.take(lay.copy_bytes)
    values = []
    for (codec, fields), meta in zip(lay.entries, metas):
        arrays = {}
        for field, dt, shape, region, offset, _, cursor in fields:
            view = np.ndarray(shape, dt, regions[region], offset)  # positional: a third cheaper
            if region == RESULT_REGION or (owned_input and region == IN_REGION):
                pass  # already the caller's memory: a writable view
            elif block is not None:
                dst = np.ndarray(shape, dt, block, cursor)
                copy_into(dst, view)
                view = dst
            elif copy:
                view = copy_of(view)
            elif readonly:
                view.flags.writeable = False
            arrays[field] = view
        values.append(codec.decode(arrays, meta))
    n_args = lay.n_args
    return values[:n_args], dict(zip(lay.kw_names, values[n_args:]))


@functools.lru_cache(maxsize=256)
def _dtype(descr: str | np.dtype) -> np.dtype:
    return np.dtype(descr)


@functools.lru_cache(maxsize=256)
def _describe(dt: np.dtype) -> str | np.dtype:
    """How a layout names ``dt`` (the inverse of `_dtype`): its string, or the dtype itself where the
    string loses fields (structured dtypes). Cached: ``dtype.str`` builds a new string each time."""
    return dt.str if dt.fields is None else dt
