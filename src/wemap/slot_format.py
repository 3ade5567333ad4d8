"""The descriptor a slot carries: where one call's arrays lie in the arena, and its small values.

Nothing here is pickled, in either direction: a descriptor is read by a process that must not
run code another process wrote into shared memory. A descriptor is::

    head     "<4sIIII": magic b"WMD1", total length, result block, block-table length, extras
    blocks   u32 per entry: arena block numbers; a field names an entry, not a block
    layout   u32 length + a plain value: (positional count, keyword names,
             ((codec name, (field, ...)), ...)), a field being (name, dtype, shape, entry, offset)
             for an array and (name,) for a value
    values   u32 length + a plain value: [codec meta, field values..., ...] in layout order

The layout is what stays the same from walker to walker (same fields, same offsets in their
blocks), so each process makes and parses each distinct layout once (`Layouts`); the block
table and the values are the per-walker part. A value that is not plain (below) is an
*extra*: it travels pickled over the worker's own pipe, and the descriptor holds its index.

Plain values: None, bool, int (64-bit), float, complex, str, bytes, numpy scalars of a plain
dtype, and tuples, lists and dicts of plain values, in a tagged binary form that is validated
as it is read (`ValueError` naming what is wrong).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

__all__ = ["Extra", "NotPlain", "encode_plain", "decode_plain", "Layouts", "Layout", "pack", "unpack",
           "NO_BLOCK", "dtype_description", "values"]

MAGIC = b"WMD1"
HEAD = struct.Struct("<4sIIII")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_C128 = struct.Struct("<dd")
#: the block-table entry of a walker with no input block
NO_BLOCK = 0xFFFFFFFF
MAX_DEPTH = 32
#: layouts a process keeps made or parsed: a few per walker shape is plenty
LAYOUT_CACHE_MAX = 512


class NotPlain(TypeError):
    """A value the plain encoding cannot hold: it goes over the pipe as an extra."""


class Extra:
    """Placeholder, in values to encode, for the ``index``-th extra of the call (already in the list)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __eq__(self, other: object) -> bool:
        return type(other) is Extra and other.index == self.index

    def __repr__(self) -> str:
        return f"Extra({self.index})"


# -- plain values --------------------------------------------------------------------------


def _enc(v: Any, out: list, extras: list | None, depth: int) -> None:
    t = type(v)
    if t is float:
        out.append(b"d" + _F64.pack(v))
    elif t is int:
        if not -(2**63) <= v < 2**63:
            raise NotPlain(f"an int of {v.bit_length()} bits")
        out.append(b"i" + _I64.pack(v))
    elif v is None:
        out.append(b"N")
    elif t is bool:
        out.append(b"T" if v else b"F")
    elif t is str:
        try:
            raw = v.encode()
        except UnicodeEncodeError as exc:  # lone surrogates
            raise NotPlain(str(exc)) from None
        out.append(b"s" + _U32.pack(len(raw)) + raw)
    elif t is bytes:
        out.append(b"b" + _U32.pack(len(v)) + v)
    elif t is tuple or t is list or t is dict:
        if depth >= MAX_DEPTH:
            raise NotPlain(f"nested deeper than {MAX_DEPTH}")
        n = len(v)
        out.append((b"t" if t is tuple else b"l" if t is list else b"m") + _U32.pack(n))
        items = v.items() if t is dict else v
        for item in items:
            if t is dict:
                _enc(item[0], out, None, depth + 1)  # keys are never extras
                _enc(item[1], out, extras, depth + 1)
            else:
                _enc(item, out, extras, depth + 1)
    elif t is complex:
        out.append(b"c" + _C128.pack(v.real, v.imag))
    elif isinstance(v, np.generic) and t.__module__ == "numpy" and v.dtype.kind in "biufcmM":
        desc = v.dtype.str.encode()
        out.append(b"g" + bytes((len(desc),)) + desc + v.tobytes())
    elif t is Extra and extras is not None:  # placed by the caller, its value already in ``extras``
        out.append(b"X" + _U32.pack(v.index))
    elif extras is not None:
        out.append(b"X" + _U32.pack(len(extras)))
        extras.append(v)
    else:
        raise NotPlain(f"a {t.__name__}")


def encode_plain(value: Any, extras: list | None = None) -> bytes:
    """``value`` in the plain encoding; what is not plain goes into ``extras`` (an index stays in its
    place), or, with ``extras`` None, raises `NotPlain`."""
    out: list[bytes] = []
    if type(value) is list:  # a descriptor's values: mostly floats and ints, encoded here at once
        out.append(b"l" + _U32.pack(len(value)))
        for v in value:
            t = type(v)
            if t is float:
                out.append(b"d" + _F64.pack(v))
            elif t is int and -(2**63) <= v < 2**63:
                out.append(b"i" + _I64.pack(v))
            else:
                _enc(v, out, extras, 1)
    else:
        _enc(value, out, extras, 0)
    return b"".join(out)


class _Reader:
    __slots__ = ("raw", "pos", "end", "extras")

    def __init__(self, raw: bytes | memoryview, extras: list) -> None:
        self.raw, self.pos, self.end, self.extras = raw, 0, len(raw), extras

    def take(self, n: int) -> int:
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise ValueError(f"a value runs past the end of its {self.end} bytes")
        self.pos = pos + n
        return pos

    def value(self, depth: int) -> Any:
        tag = self.raw[self.take(1)]
        raw = self.raw
        if tag == 100:  # d
            return _F64.unpack_from(raw, self.take(8))[0]
        if tag == 105:  # i
            return _I64.unpack_from(raw, self.take(8))[0]
        if tag == 78:  # N
            return None
        if tag == 84 or tag == 70:  # T F
            return tag == 84
        if tag == 115 or tag == 98:  # s b
            n = _U32.unpack_from(raw, self.take(4))[0]
            data = bytes(raw[self.take(n) : self.pos])
            if tag == 98:
                return data
            try:
                return data.decode()
            except UnicodeDecodeError as exc:
                raise ValueError(f"a string that is not UTF-8 ({exc})") from None
        if tag in (116, 108, 109):  # t l m
            if depth >= MAX_DEPTH:
                raise ValueError(f"values nested deeper than {MAX_DEPTH}")
            n = _U32.unpack_from(raw, self.take(4))[0]
            if n > self.end - self.pos:  # each item is at least one byte
                raise ValueError(f"a container of {n} items in {self.end - self.pos} bytes")
            if tag == 109:
                d = {}
                for _ in range(n):
                    key = self.value(depth + 1)
                    if type(key) not in (str, int, float, bool, bytes, complex, type(None)) and type(key) is not tuple:
                        raise ValueError(f"a dict key of type {type(key).__name__}")
                    try:
                        d[key] = self.value(depth + 1)
                    except TypeError as exc:  # an unhashable tuple key
                        raise ValueError(f"a dict key that cannot be hashed ({exc})") from None
                return d
            items = [self.value(depth + 1) for _ in range(n)]
            return tuple(items) if tag == 116 else items
        if tag == 99:  # c
            re, im = _C128.unpack_from(raw, self.take(16))
            return complex(re, im)
        if tag == 103:  # g
            n = raw[self.take(1)]
            desc = bytes(raw[self.take(n) : self.pos])
            try:
                dt = np.dtype(desc.decode("ascii"))
            except (TypeError, ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"a numpy scalar of dtype {desc!r} ({exc})") from None
            if dt.kind not in "biufcmM" or dt.fields is not None or dt.subdtype is not None:
                raise ValueError(f"a numpy scalar of dtype {dt}")
            return np.frombuffer(bytes(raw[self.take(dt.itemsize) : self.pos]), dt)[0]
        if tag == 88:  # X
            k = _U32.unpack_from(raw, self.take(4))[0]
            if k >= len(self.extras):
                raise ValueError(f"extra {k} of {len(self.extras)}")
            return self.extras[k]
        raise ValueError(f"unknown tag {tag}")


def decode_plain(raw: bytes | memoryview, extras: list = ()) -> Any:  # type: ignore[assignment]
    """The value `encode_plain` wrote, its extras taken from ``extras`` (what came over the pipe)."""
    r = _Reader(raw, extras)
    if r.end >= 5 and raw[0] == 108:  # a list (a descriptor's values): its floats and ints read here at once
        n = _U32.unpack_from(raw, 1)[0]
        r.pos = 5
        if n > r.end:
            raise ValueError(f"a container of {n} items in {r.end - 5} bytes")
        items = []
        for _ in range(n):
            pos = r.pos
            tag = raw[pos] if pos < r.end else -1
            if tag == 100 and pos + 9 <= r.end:
                items.append(_F64.unpack_from(raw, pos + 1)[0])
                r.pos = pos + 9
            elif tag == 105 and pos + 9 <= r.end:
                items.append(_I64.unpack_from(raw, pos + 1)[0])
                r.pos = pos + 9
            else:
                items.append(r.value(1))
        value: Any = items
    else:
        value = r.value(0)
    if r.pos != r.end:
        raise ValueError(f"{r.end - r.pos} bytes after the value")
    return value


# -- dtypes ----------------------------------------------------------------------------------

_DESCRIBED: dict[np.dtype, Any] = {}


def dtype_description(dt: np.dtype) -> Any:
    """How a layout names ``dt``: its string, or for a structured dtype its ``descr`` (a plain list);
    None when neither gives ``dt`` back (such an array travels as an extra)."""
    try:
        return _DESCRIBED[dt]
    except KeyError:
        pass
    desc: Any = dt.str if dt.fields is None and dt.subdtype is None else dt.descr
    try:
        if np.dtype(desc) != dt or encode_plain(desc) is None:
            desc = None
    except (TypeError, ValueError):
        desc = None
    if len(_DESCRIBED) < LAYOUT_CACHE_MAX:
        _DESCRIBED[dt] = desc
    return desc


def _parse_dtype(desc: Any, field: str) -> np.dtype:
    if type(desc) is not str and type(desc) is not list:
        raise ValueError(f"field {field!r} has a bad dtype {desc!r}")
    try:
        dt = np.dtype(desc)
    except Exception as exc:  # numpy raises TypeError, ValueError, and others for odd descriptions
        raise ValueError(f"field {field!r} has a bad dtype {desc!r} ({type(exc).__name__})") from None
    if dt.hasobject:
        raise ValueError(f"field {field!r} claims dtype {dt}, which holds Python objects, not raw bytes")
    return dt


# -- layouts ---------------------------------------------------------------------------------


class Layout:
    """A parsed, validated layout: per argument its codec and fields.

    ``entries``: ``(codec, fields)``; a field is ``(name, dtype, shape, entry, offset)`` for an
    array, ``(name,)`` for a value. ``n_values``: how many values the layout reads.
    """

    __slots__ = ("n_args", "kw_names", "entries", "n_values", "max_entry")

    def __init__(self, n_args: int, kw_names: tuple, entries: tuple, n_values: int, max_entry: int) -> None:
        self.n_args, self.kw_names, self.entries = n_args, kw_names, entries
        self.n_values, self.max_entry = n_values, max_entry


class Layouts:
    """Each process's layouts, made (bytes by key) and parsed (bytes to `Layout`) once.

    ``codecs`` maps codec names to codecs; ``block_size`` bounds every array field.
    """

    def __init__(self, codecs: dict[str, Any], block_size: int) -> None:
        self.codecs, self.block_size = codecs, block_size
        self._made: dict[tuple, bytes] = {}
        self._parsed: dict[bytes, Layout] = {}

    def make(self, key: tuple) -> bytes:
        raw = self._made.get(key)
        if raw is None:
            raw = encode_plain(key)
            if len(self._made) >= LAYOUT_CACHE_MAX:
                self._made.clear()
            self._made[key] = raw
        return raw

    def parse(self, raw: bytes) -> Layout:
        lay = self._parsed.get(raw)
        if lay is None:
            try:
                lay = self._parse(decode_plain(raw))
            except (ValueError, TypeError, IndexError, KeyError) as exc:
                raise ValueError(f"malformed slot descriptor: {exc}") from None
            if len(self._parsed) >= LAYOUT_CACHE_MAX:
                self._parsed.clear()
            self._parsed[raw] = lay
        return lay

    def _parse(self, value: Any) -> Layout:
        if type(value) is not tuple or len(value) != 3:
            raise ValueError("a layout is not a (count, keywords, entries) tuple")
        n_args, kw_names, raw_entries = value
        if not (type(n_args) is int and type(kw_names) is tuple and type(raw_entries) is tuple
                and 0 <= n_args == len(raw_entries) - len(kw_names)
                and all(type(k) is str for k in kw_names) and len(set(kw_names)) == len(kw_names)):
            raise ValueError(f"{n_args!r} positional arguments and keywords {kw_names!r} "
                             f"for {len(raw_entries) if type(raw_entries) is tuple else '?'} entries")
        entries = []
        n_values, max_entry = 0, -1
        for entry in raw_entries:
            if type(entry) is not tuple or len(entry) != 2 or type(entry[0]) is not str or type(entry[1]) is not tuple:
                raise ValueError(f"an entry {entry!r:.80} is not (codec name, fields)")
            name, raw_fields = entry
            codec = self.codecs.get(name)
            if codec is None:
                raise ValueError(f"the descriptor names codec {name!r}, which this process does not have")
            n_values += 1  # the codec's meta
            fields = []
            for f in raw_fields:
                if type(f) is not tuple or not f or type(f[0]) is not str:
                    raise ValueError(f"a field {f!r:.80} has no name")
                if len(f) == 1:
                    fields.append(f)
                    n_values += 1
                    continue
                if len(f) != 5:
                    raise ValueError(f"field {f[0]!r} has {len(f)} items, not 5")
                field, desc, shape, entry_no, offset = f
                dt = _parse_dtype(desc, field)
                if not (type(shape) is tuple and all(type(n) is int and n >= 0 for n in shape)):
                    raise ValueError(f"field {field!r} has a bad shape {shape!r}")
                nbytes = math.prod(shape) * dt.itemsize
                if not (type(entry_no) is int and 0 <= entry_no < NO_BLOCK and type(offset) is int
                        and 0 <= offset and offset + nbytes <= self.block_size):
                    raise ValueError(f"field {field!r} lies outside its block (entry {entry_no!r}, offset "
                                     f"{offset!r}, {nbytes} bytes, blocks of {self.block_size})")
                max_entry = max(max_entry, entry_no)
                fields.append((field, dt, shape, entry_no, offset))
            entries.append((codec, tuple(fields)))
        return Layout(n_args, kw_names, tuple(entries), n_values, max_entry)


# -- descriptors ---------------------------------------------------------------------------


_TABLES = [struct.Struct(f"<{n}I") for n in range(9)]


def _table(n: int) -> struct.Struct:
    return _TABLES[n] if n < len(_TABLES) else struct.Struct(f"<{n}I")


def pack(blocks: list[int], layout: bytes, values: bytes, n_extras: int, result_block: int = NO_BLOCK) -> bytes:
    """One descriptor (see the module docstring)."""
    nb = len(blocks)
    n = HEAD.size + 4 * nb + 8 + len(layout) + len(values)
    return b"".join((HEAD.pack(MAGIC, n, result_block, nb, n_extras), _table(nb).pack(*blocks),
                     _U32.pack(len(layout)), layout, _U32.pack(len(values)), values))


def unpack(region: np.ndarray | memoryview, layouts: Layouts, nblocks: int
           ) -> tuple[int, list[int], Layout, bytes, int]:
    """Read and check the descriptor at the start of ``region``: (result block, block table, layout,
    values still encoded, number of extras). Every block number is below ``nblocks`` (or
    `NO_BLOCK`); `ValueError` names what is wrong. `values` decodes the values once the extras are in."""
    mv = memoryview(region).cast("B") if not isinstance(region, memoryview) else region
    if len(mv) < HEAD.size:
        raise ValueError(f"malformed slot descriptor: a region of {len(mv)} bytes")
    magic, total, result_block, n_blocks, n_extras = HEAD.unpack_from(mv)
    if magic != MAGIC or not HEAD.size + 4 * n_blocks + 8 <= total <= len(mv):
        raise ValueError(f"malformed slot descriptor (magic {bytes(magic)!r}, {total} bytes, {n_blocks} blocks, "
                         f"a region of {len(mv)} bytes)")
    if result_block != NO_BLOCK and result_block >= nblocks:
        raise ValueError(f"malformed slot descriptor: result block {result_block} of {nblocks}")
    if HEAD.size + 4 * n_blocks > len(mv):
        raise ValueError(f"malformed slot descriptor: {n_blocks} blocks in a region of {len(mv)} bytes")
    blocks = list(_table(n_blocks).unpack_from(mv, HEAD.size))
    if any(b >= nblocks and b != NO_BLOCK for b in blocks):
        raise ValueError(f"malformed slot descriptor: a block beyond the arena's {nblocks} in {blocks}")
    pos = HEAD.size + 4 * n_blocks
    (n,) = _U32.unpack_from(mv, pos)
    if pos + 8 + n > total:
        raise ValueError(f"malformed slot descriptor: a layout of {n} bytes runs past the descriptor ({total} bytes)")
    layout = layouts.parse(bytes(mv[pos + 4 : pos + 4 + n]))
    pos += 4 + n
    (m,) = _U32.unpack_from(mv, pos)
    if pos + 4 + m != total:
        raise ValueError(f"malformed slot descriptor: values of {m} bytes do not end the descriptor")
    if layout.max_entry >= n_blocks:
        raise ValueError(f"malformed slot descriptor: a field in block entry {layout.max_entry} of {n_blocks}")
    return result_block, blocks, layout, bytes(mv[pos + 4 : total]), n_extras


def values(raw: bytes, layout: Layout, extras: list) -> list:
    """The values of a descriptor `unpack` read, with its ``extras``; checked against its layout."""
    try:
        vals = decode_plain(raw, extras)
    except (ValueError, struct.error) as exc:
        raise ValueError(f"malformed slot descriptor: {exc}") from None
    if type(vals) is not list or len(vals) != layout.n_values:
        raise ValueError(f"malformed slot descriptor: {len(vals) if type(vals) is list else 'no'} values, "
                         f"the layout has {layout.n_values}")
    return vals
