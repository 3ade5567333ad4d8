"""One segment call (a walker and its arguments) to a descriptor and back, on either side.

Every array field lies in arena blocks: in entry 0 of the descriptor's block table (the block
the caller copies arrays into: the walker's input block in the manager, its result block in
the worker) or, when it already lies in a block (`Arena.placement`, `ArenaMap.placement`), where
it is. Every other value is plain (`wemap.slot_format`) or an extra for the pipe.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._arrays import FieldError, Placement
from ..codec import CodecRegistry
from ..plain_values import Extra, NotPlain, encode_plain
from ..slot_format import Layout, Layouts

__all__ = ["encode_call", "decode_call", "SCALAR_ENTRY"]

_PLAIN_SCALARS = frozenset({int, float, bool, type(None)})
SCALAR_ENTRY = ("scalar", ())


def _argument(where: str, which: int | str) -> str:
    return f"{where}, argument {which}" if type(which) is int else f"{where}, argument {which!r}"


def encode_call(layouts: Layouts, reg: CodecRegistry, args: tuple, kwargs: dict, *, where: str,
                place: Placement) -> Placement:
    """Lay out ``args``/``kwargs`` without writing anything, their arrays placed by ``place`` (a fresh
    `Placement`, returned with the call's layout, values and extras); `ValueError` naming ``where`` and
    the field for anything that cannot travel."""
    entries = []
    vals: list[Any] = []
    extras: list[Any] = []
    for which, value in (*enumerate(args), *kwargs.items()):
        if type(value) in _PLAIN_SCALARS and not reg.custom:  # a segment length: what `ScalarCodec` says
            vals.append(value)
            entries.append(SCALAR_ENTRY)
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
        try:
            entries.append((codec.name, place.fields(fields, vals)))
        except FieldError as exc:
            raise ValueError(f"{_argument(where, which)}: the {codec.name!r} codec gave {exc}") from None
    key = (len(args), tuple(kwargs), tuple(entries))
    try:
        place.layout = layouts.make(key)
    except TypeError:  # a structured dtype's description (a list) cannot key the cache
        place.layout = encode_plain(key)
    try:
        place.values = encode_plain(vals, extras)
    except NotPlain:  # a dict with a key that is not plain: that value goes over the pipe whole
        del extras[sum(type(v) is Extra for v in vals):]
        place.values = encode_plain([_plain_or_extra(v, extras) for v in vals], extras)
    place.extras = extras
    return place


def _plain_or_extra(v: Any, extras: list) -> Any:
    if type(v) is Extra:
        return v
    try:
        encode_plain(v, [])
    except NotPlain:
        extras.append(v)
        return Extra(len(extras) - 1)
    return v


def decode_call(layout: Layout, vals: list, bases: list) -> tuple[list, dict]:
    """Rebuild a call's arguments: an array field in block entry ``e`` at ``offset`` is a view of
    ``bases[e]``'s array from its start plus ``offset`` (``bases[e]`` None: the descriptor names no block)."""
    it = iter(vals)
    out = []
    for codec, fields in layout.entries:
        meta = next(it)
        named: dict[str, Any] = {}
        for f in fields:
            if len(f) == 1:
                named[f[0]] = next(it)
                continue
            name, dt, shape, entry, offset = f
            base = bases[entry]
            if base is None:
                raise ValueError(f"malformed slot descriptor: field {name!r} is in no block")
            named[name] = np.ndarray(shape, dt, base[0], base[1] + offset)
        try:
            out.append(codec.decode(named, meta))
        except Exception as exc:
            raise ValueError(f"the {codec.name!r} codec cannot decode what it was sent: "
                             f"{type(exc).__name__}: {exc}") from exc
    n = layout.n_args
    return out[:n], dict(zip(layout.kw_names, out[n:]))
