"""Plain values in a tagged binary form: what a descriptor holds besides where arrays lie.

None, bool, int (64-bit), float, complex, str, bytes, numpy scalars of a plain dtype, and
tuples, lists and dicts of plain values; validated as it is read (`ValueError` naming what is
wrong). A value that is not plain is an *extra*: `encode_plain` puts it in a list the caller
sends over the worker's pipe (pickled), and leaves its index in its place. Nothing here runs
code a value names: there is no pickle in either direction.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

__all__ = ["Extra", "NotPlain", "encode_plain", "decode_plain", "MAX_DEPTH"]

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_C128 = struct.Struct("<dd")
MAX_DEPTH = 32


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
