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

Plain values are `wemap.plain_values`.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from .plain_values import decode_plain, encode_plain

__all__ = ["Layouts", "Layout", "pack_into", "packed_size", "unpack", "NO_BLOCK", "dtype_description", "values"]

MAGIC = b"WMD1"
HEAD = struct.Struct("<4sIIII")
_U32 = struct.Struct("<I")
#: the block-table entry of a walker with no input block
NO_BLOCK = 0xFFFFFFFF
#: layouts a process keeps made or parsed: a few per walker shape is plenty
LAYOUT_CACHE_MAX = 512


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
        encode_plain(desc)  # NotPlain (a TypeError) for a description that is not plain
        if np.dtype(desc) != dt:
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


_FORMATS: dict[tuple[int, int, int], struct.Struct] = {}


def _format(n_blocks: int, n_layout: int, n_values: int) -> struct.Struct:
    """The whole descriptor as one struct, so that it is written and read in one call."""
    key = (n_blocks, n_layout, n_values)
    fmt = _FORMATS.get(key)
    if fmt is None:
        fmt = struct.Struct(f"<4sIIII{n_blocks}II{n_layout}sI{n_values}s")
        if len(_FORMATS) >= LAYOUT_CACHE_MAX:
            _FORMATS.clear()
        _FORMATS[key] = fmt
    return fmt


def packed_size(n_blocks: int, layout: bytes, values: bytes) -> int:
    """Bytes of a descriptor with ``n_blocks`` table entries, without making it."""
    return HEAD.size + 4 * n_blocks + 8 + len(layout) + len(values)


def pack_into(region: Any, blocks: list[int], layout: bytes, values: bytes, n_extras: int,
              result_block: int = NO_BLOCK) -> int:
    """Write one descriptor (see the module docstring) at the start of ``region``; its length.
    `struct.error` when ``region`` is too small (`packed_size` says beforehand)."""
    fmt = _format(len(blocks), len(layout), len(values))
    fmt.pack_into(region, 0, MAGIC, fmt.size, result_block, len(blocks), n_extras, *blocks,
                  len(layout), layout, len(values), values)
    return fmt.size


def unpack(region: np.ndarray | memoryview | bytes, layouts: Layouts, nblocks: int
           ) -> tuple[int, list[int], Layout, bytes, int]:
    """Read and check the descriptor at the start of ``region``: (result block, block table, layout,
    values still encoded, number of extras). Every block number is below ``nblocks`` (or
    `NO_BLOCK`); `ValueError` names what is wrong. `values` decodes the values once the extras are in."""
    length = len(region) if not isinstance(region, np.ndarray) else region.nbytes
    if length < HEAD.size:
        raise ValueError(f"malformed slot descriptor: a region of {length} bytes")
    magic, total, result_block, n_blocks, n_extras = HEAD.unpack_from(region)
    pos = HEAD.size + 4 * n_blocks
    if magic != MAGIC or not pos + 8 <= total <= length:
        raise ValueError(f"malformed slot descriptor (magic {bytes(magic)!r}, {total} bytes, {n_blocks} blocks, "
                         f"a region of {length} bytes)")
    if result_block != NO_BLOCK and result_block >= nblocks:
        raise ValueError(f"malformed slot descriptor: result block {result_block} of {nblocks}")
    (n,) = _U32.unpack_from(region, pos)
    if pos + 8 + n > total:
        raise ValueError(f"malformed slot descriptor: a layout of {n} bytes runs past the descriptor ({total} bytes)")
    (m,) = _U32.unpack_from(region, pos + 4 + n)
    if pos + 8 + n + m != total:
        raise ValueError(f"malformed slot descriptor: values of {m} bytes do not end the descriptor")
    _, _, _, _, _, *blocks, _, raw_layout, _, raw = _format(n_blocks, n, m).unpack_from(region)
    for b in blocks:
        if b >= nblocks and b != NO_BLOCK:
            raise ValueError(f"malformed slot descriptor: a block beyond the arena's {nblocks} in {blocks}")
    layout = layouts.parse(raw_layout)
    if layout.max_entry >= n_blocks:
        raise ValueError(f"malformed slot descriptor: a field in block entry {layout.max_entry} of {n_blocks}")
    return result_block, blocks, layout, raw, n_extras


def values(raw: bytes, layout: Layout, extras: list) -> list:
    """The values of a descriptor `unpack` read, with its ``extras``; checked against its layout."""
    try:
        vals = decode_plain(raw, extras)
    except ValueError as exc:
        raise ValueError(f"malformed slot descriptor: {exc}") from None
    if type(vals) is not list or len(vals) != layout.n_values:
        raise ValueError(f"malformed slot descriptor: {len(vals) if type(vals) is list else 'no'} values, "
                         f"the layout has {layout.n_values}")
    return vals
