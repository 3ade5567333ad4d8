"""Plain values in MessagePack: what a descriptor holds besides where arrays lie.

None, bool, int (64-bit), float, complex, str, bytes, numpy scalars of a plain dtype, and
tuples, lists and dicts of plain values; validated as it is read (`ValueError` naming what is
wrong). MessagePack has no tuples, complex numbers or numpy scalars: they travel as its
extension types, read back only as what they are. A value that is not plain is an *extra*:
`encode_plain` puts it in a list the caller sends over the worker's pipe (pickled), and leaves
its index in its place. Nothing here runs code a value names: there is no pickle in either
direction.
"""

from __future__ import annotations

import struct
import threading
from functools import partial
from typing import Any

import msgpack
import numpy as np

__all__ = ["Extra", "NotPlain", "encode_plain", "decode_plain"]

_TUPLE, _COMPLEX, _SCALAR, _EXTRA = 1, 2, 3, 4
_C128 = struct.Struct("<dd")
_U32 = struct.Struct("<I")


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


def _default(extras: list | None, v: Any) -> msgpack.ExtType:
    """What MessagePack does not hold itself (``strict_types``: subclasses of its types come here too)."""
    t = type(v)
    if t is tuple:
        return msgpack.ExtType(_TUPLE, _pack(v, extras, list))
    if t is complex:
        return msgpack.ExtType(_COMPLEX, _C128.pack(v.real, v.imag))
    if isinstance(v, np.generic) and t.__module__ == "numpy" and v.dtype.kind in "biufcmM":
        desc = v.dtype.str.encode()
        return msgpack.ExtType(_SCALAR, bytes((len(desc),)) + desc + v.tobytes())
    if t is Extra and extras is not None:  # placed by the caller, its value already in ``extras``
        return msgpack.ExtType(_EXTRA, _U32.pack(v.index))
    if extras is None:
        raise NotPlain(f"a {t.__name__}")
    extras.append(v)
    return msgpack.ExtType(_EXTRA, _U32.pack(len(extras) - 1))


_NO_EXTRAS = partial(_default, None)


def _check_keys(value: Any) -> None:
    """`NotPlain` for a dict key that is not plain: keys are never extras (a key read back must hash)."""
    t = type(value)
    if t is dict:
        for key, item in value.items():
            _pack(key, None)
            _check_keys(item)
    elif t is list or t is tuple:
        for item in value:
            if type(item) in _CONTAINERS:
                _check_keys(item)


_CONTAINERS = frozenset({dict, list, tuple})


def _pack(value: Any, extras: list | None, as_type: type | None = None) -> bytes:
    if as_type is not None:
        value = as_type(value)
    try:
        default = _NO_EXTRAS if extras is None else partial(_default, extras)
        return msgpack.packb(value, default=default, use_bin_type=True, strict_types=True)
    except (OverflowError, UnicodeEncodeError, ValueError, RecursionError) as exc:  # over 64 bits, a lone
        raise NotPlain(str(exc)) from None  # surrogate, nested too deep


class _TopPacker(threading.local):
    """One packer per thread for `encode_plain`'s values (making a packer costs more than packing a
    walker's few values); what it packs inside a tuple gets a packer of its own (`_pack`): one is not
    re-entrant."""

    def __init__(self) -> None:
        self.extras: list | None = None
        self.packer = self.new_packer()

    def new_packer(self) -> msgpack.Packer:
        return msgpack.Packer(default=self._default, use_bin_type=True, strict_types=True)

    def _default(self, v: Any) -> msgpack.ExtType:
        return _default(self.extras, v)


_top = _TopPacker()
#: the largest value after which a thread keeps its packer (and the buffer it grew)
_PACKER_KEEPS = 1 << 20


def encode_plain(value: Any, extras: list | None = None) -> bytes:
    """``value`` in the plain encoding; what is not plain goes into ``extras`` (an index stays in its
    place), or, with ``extras`` None, raises `NotPlain`."""
    if extras is not None and type(value) in _CONTAINERS:
        _check_keys(value)
    top = _top
    top.extras = extras
    try:
        raw = top.packer.pack(value)  # a failed pack leaves the packer empty
    except (OverflowError, UnicodeEncodeError, ValueError, RecursionError) as exc:
        raise NotPlain(str(exc)) from None
    finally:
        top.extras = None
    if len(raw) > _PACKER_KEEPS:  # a packer's buffer only grows: a large value's would stay with the thread
        top.packer = top.new_packer()
    return raw


def _ext(extras: list, code: int, data: bytes) -> Any:
    if code == _TUPLE:
        items = _unpack(data, extras)
        if type(items) is not list:
            raise ValueError(f"a tuple of a {type(items).__name__}")
        return tuple(items)
    if code == _COMPLEX and len(data) == _C128.size:
        return complex(*_C128.unpack(data))
    if code == _SCALAR and data and len(data) > data[0]:
        try:
            dt = np.dtype(data[1 : 1 + data[0]].decode("ascii"))
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"a numpy scalar of dtype {data[1 : 1 + data[0]]!r} ({exc})") from None
        if dt.kind not in "biufcmM" or dt.fields is not None or dt.subdtype is not None:
            raise ValueError(f"a numpy scalar of dtype {dt}")
        if len(data) != 1 + data[0] + dt.itemsize:
            raise ValueError(f"a numpy scalar of dtype {dt} in {len(data) - 1 - data[0]} bytes")
        return np.frombuffer(data, dt, 1, 1 + data[0])[0]
    if code == _EXTRA and len(data) == _U32.size:
        (k,) = _U32.unpack(data)
        if k >= len(extras):
            raise ValueError(f"extra {k} of {len(extras)}")
        return extras[k]
    raise ValueError(f"an extension value of type {code} in {len(data)} bytes")


def _unpack(raw: bytes, extras: list) -> Any:
    return msgpack.unpackb(raw, ext_hook=partial(_ext, extras), raw=False, strict_map_key=False, use_list=True)


def decode_plain(raw: bytes | memoryview, extras: list = ()) -> Any:  # type: ignore[assignment]
    """The value `encode_plain` wrote, its extras taken from ``extras`` (what came over the pipe)."""
    try:
        return _unpack(raw, extras)
    except ValueError:
        raise
    except (TypeError, RecursionError, msgpack.UnpackException) as exc:  # a list as a dict key, nesting, ...
        raise ValueError(f"not a plain value ({type(exc).__name__}: {exc})") from None
