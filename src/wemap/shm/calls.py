"""One segment call (a walker and its arguments) to a descriptor and back, on either side.

Every array field lies in arena blocks: in entry 0 of the descriptor's block table (the block
the caller copies arrays into: the walker's input block in the manager, its result block in
the worker) or, when it already lies in a block (`Arena.locate`, `ArenaMap.locate`), where it
is. Every other value is plain (`wemap.slot_format`) or an extra for the pipe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..codec import CodecRegistry
from ..plain_values import Extra, NotPlain, encode_plain
from ..slot_format import NO_BLOCK, Layout, Layouts, dtype_description

__all__ = ["Encoded", "encode_call", "decode_call", "ALIGN"]

ALIGN = 64
_PLAIN_SCALARS = frozenset({int, float, bool, type(None)})
_SCALAR_ENTRY = ("scalar", ())


class Encoded:
    """One call laid out: its layout and values (bytes), extras, and the arrays still to be copied."""

    __slots__ = ("layout", "values", "extras", "copies", "offsets", "copy_bytes", "refs", "array_bytes", "largest")

    def __init__(self, layout: bytes, values: bytes, extras: list, copies: list, offsets: list, copy_bytes: int,
                 refs: list, array_bytes: int, largest: tuple[str, int]) -> None:
        self.layout, self.values, self.extras = layout, values, extras
        self.copies, self.offsets, self.copy_bytes = copies, offsets, copy_bytes
        self.refs, self.array_bytes, self.largest = refs, array_bytes, largest


def _argument(where: str, which: int | str) -> str:
    return f"{where}, argument {which}" if type(which) is int else f"{where}, argument {which!r}"


def encode_call(layouts: Layouts, reg: CodecRegistry, args: tuple, kwargs: dict, *, where: str,
                locate: Callable[[np.ndarray], tuple[int, int] | None]) -> Encoded:
    """Lay out ``args``/``kwargs`` without writing anything; `ValueError` naming ``where`` and the field
    for anything that cannot travel."""
    entries = []
    vals: list[Any] = []
    extras: list[Any] = []
    copies: list[np.ndarray] = []
    offsets: list[int] = []
    refs: list[int] = []
    cursor = array_bytes = 0
    largest = ("", 0)
    for which, value in (*enumerate(args), *kwargs.items()):
        if type(value) in _PLAIN_SCALARS and not reg.custom:  # a segment length: what `ScalarCodec` says
            vals.append(value)
            entries.append(_SCALAR_ENTRY)
            continue
        codec = reg.for_object(value)
        try:
            fields, meta = codec.encode(value)
        except Exception as exc:  # a user codec's bug or an object that refuses to pickle: name the walker
            raise ValueError(f"{_argument(where, which)}: the {codec.name!r} codec cannot encode it: "
                             f"{type(exc).__name__}: {exc}") from exc
        if codec.pipe_meta:
            vals.append(Extra(len(extras)))
            extras.append(meta)
        else:
            vals.append(meta)
        described = []
        for name, v in fields.items():
            if type(name) is not str:
                raise ValueError(f"{_argument(where, which)}: the {codec.name!r} codec names a field {name!r}, "
                                 f"not a string")
            if type(v) is np.ndarray:
                dt = v.dtype
                if dt.hasobject:
                    raise ValueError(f"{_argument(where, which)}: field {name!r} has dtype {dt} (Python objects), "
                                     f"which cannot travel through shared memory; use a numeric dtype or keep it "
                                     f"out of the walker state")
                desc = dtype_description(dt)
                if desc is not None:
                    nbytes = v.nbytes
                    if nbytes > largest[1]:
                        largest = (name, nbytes)
                    array_bytes += (nbytes + ALIGN - 1) & ~(ALIGN - 1)
                    loc = locate(v)
                    if loc is None:
                        entry, offset = 0, cursor
                        copies.append(v)
                        offsets.append(offset)
                        cursor = (offset + nbytes + ALIGN - 1) & ~(ALIGN - 1)
                    else:
                        block, offset = loc
                        try:
                            entry = refs.index(block) + 1
                        except ValueError:
                            refs.append(block)
                            entry = len(refs)
                    described.append((name, desc, v.shape, entry, offset))
                    continue
            described.append((name,))
            vals.append(v)
        entries.append((codec.name, tuple(described)))
    key = (len(args), tuple(kwargs), tuple(entries))
    try:
        layout = layouts.make(key)
    except TypeError:  # a structured dtype's description (a list) cannot key the cache
        layout = encode_plain(key)
    try:
        values = encode_plain(vals, extras)
    except NotPlain:  # a dict with a key that is not plain: that value goes over the pipe whole
        del extras[sum(type(v) is Extra for v in vals):]
        values = encode_plain([_plain_or_extra(v, extras) for v in vals], extras)
    return Encoded(layout, values, extras, copies, offsets, cursor, refs, array_bytes, largest)


def _plain_or_extra(v: Any, extras: list) -> Any:
    if type(v) is Extra:
        return v
    try:
        encode_plain(v, [])
    except NotPlain:
        extras.append(v)
        return Extra(len(extras) - 1)
    return v


def decode_call(layout: Layout, blocks: list[int], vals: list,
                view: Callable[[int, np.dtype, tuple, int], np.ndarray]) -> tuple[list, dict]:
    """Rebuild a call's arguments: each array field is ``view(block, dtype, shape, offset)``."""
    it = iter(vals)
    out = []
    for codec, fields in layout.entries:
        meta = next(it)
        named: dict[str, Any] = {}
        for f in fields:
            if len(f) == 1:
                named[f[0]] = next(it)
            else:
                name, dt, shape, entry, offset = f
                block = blocks[entry]
                if block == NO_BLOCK:
                    raise ValueError(f"malformed slot descriptor: field {name!r} is in no block")
                named[name] = view(block, dt, shape, offset)
        try:
            out.append(codec.decode(named, meta))
        except Exception as exc:
            raise ValueError(f"the {codec.name!r} codec cannot decode what it was sent: "
                             f"{type(exc).__name__}: {exc}") from exc
    n = layout.n_args
    return out[:n], dict(zip(layout.kw_names, out[n:]))
