"""Walker ↔ named fields (numpy arrays and plain values) + small metadata: the codecs.

A *codec* turns one argument of a segment call (usually a walker) into named fields and a
small metadata value, and back. `SharedMemWorkerMapper` puts every field that is a plain
``numpy.ndarray`` into a block of its shared-memory arena, and fields and metadata that are
plain values (numbers, strings, tuples of them: `wemap.slot_format`) into the slot's
descriptor; anything else in a walker travels pickled over the worker's pipe. Built in,
chosen by type:

=====================  ===========================================================
``walker``             `wemap.Walker`: its ``state`` are the fields, its weight the meta
``scalar``             an int, float, bool, str, bytes or None: the meta itself
``wepy_walker``        wepy's ``Walker`` whose state is a plain ``WalkerState``
``openmm_walker``      wepy's ``OpenMMWalker`` over a `wemap.openmm.ArrayState` (lazy: see `LazyCodec`)
``array``              a bare ``numpy.ndarray`` (a subclass, such as a masked array,
                       goes to ``pickle5``: its extra parts are not raw bytes)
``pickle5``            anything else: pickle protocol 5 over the pipe, its contiguous
                       buffers out of band, as arrays in the arena
=====================  ===========================================================

Codecs of your own (``SharedMemWorkerMapper(codecs=[...])``) are tried first.
"""

from __future__ import annotations

import importlib
import pickle
import sys
from typing import Any

import numpy as np

from .walker import Walker

__all__ = ["Codec", "WalkerCodec", "ScalarCodec", "WepyWalkerCodec", "LazyCodec", "ArrayCodec", "Pickle5Codec",
           "CodecRegistry"]


class Codec:
    """Protocol: ``encode(obj) -> (fields, meta)`` and ``decode(fields, meta) -> obj``.

    ``fields`` maps names to values, in order: each ``numpy.ndarray`` (exactly that type) travels
    as raw bytes through shared memory, every other value as a plain value or, failing that,
    pickled over the worker's pipe; ``decode`` gets the same names, in the same order, with
    arrays as views of shared memory. ``meta`` travels the same way. ``encode`` should have no
    side effects: a walker may be encoded again when it has to be re-run.

    ``pipe_meta``: the meta goes over the pipe however plain it is (for a codec whose ``decode``
    would unpickle it, as ``pickle5`` does: shared memory is never unpickled).
    """

    name = "codec"
    pipe_meta = False

    def accepts(self, obj: Any) -> bool:
        raise NotImplementedError

    def encode(self, obj: Any) -> tuple[dict[str, Any], Any]:
        raise NotImplementedError

    def decode(self, fields: dict[str, Any], meta: Any) -> Any:
        raise NotImplementedError


_SCALARS = frozenset({int, float, bool, str, bytes, complex, type(None)})


class ScalarCodec(Codec):
    """Plain scalars (a segment length, a cycle index) ride in the descriptor as they are."""

    name = "scalar"

    def accepts(self, obj: Any) -> bool:
        return type(obj) in _SCALARS

    def encode(self, obj: Any) -> tuple[dict[str, Any], Any]:
        return {}, obj

    def decode(self, fields: dict[str, Any], meta: Any) -> Any:
        return meta


class WalkerCodec(Codec):
    """`wemap.Walker`: ``state`` is the fields, the weight the meta."""

    name = "walker"

    def accepts(self, obj: Any) -> bool:
        return type(obj) is Walker

    def encode(self, obj: Walker) -> tuple[dict[str, Any], Any]:
        return obj.state, obj.weight

    def decode(self, fields: dict[str, Any], meta: Any) -> Walker:
        return Walker(fields, meta)


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
        return (type(obj) is walker_t and type(obj.state) is state_t
                and isinstance(getattr(obj.state, "_data", None), dict))

    def encode(self, obj: Any) -> tuple[dict[str, Any], Any]:
        return obj.state._data, obj.weight

    def decode(self, fields: dict[str, Any], meta: Any) -> Any:
        if self._types is None:
            raise ValueError("a wepy walker arrived, but wepy is not installed in this process")
        walker_t, state_t = self._types
        return walker_t(state_t(**fields), meta)


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

    def encode(self, obj: Any) -> tuple[dict[str, Any], Any]:
        return self._load().encode(obj)

    def decode(self, fields: dict[str, Any], meta: Any) -> Any:
        return self._load().decode(fields, meta)


#: (name, trigger, target) of the `LazyCodec` built-ins: wepy's OpenMMWalker over a wemap ArrayState
LAZY_CODECS = (("openmm_walker", "wepy.runners.openmm", "wemap.openmm.wepy_walkers:OpenMMWalkerCodec"),)


class ArrayCodec(Codec):
    name = "array"

    def accepts(self, obj: Any) -> bool:
        return type(obj) is np.ndarray

    def encode(self, obj: np.ndarray) -> tuple[dict[str, Any], Any]:
        return {"array": obj}, None

    def decode(self, fields: dict[str, Any], meta: Any) -> np.ndarray:
        return fields["array"]


class Pickle5Codec(Codec):
    """Anything else: pickled over the pipe, its contiguous buffers out of band through the arena."""

    name = "pickle5"
    pipe_meta = True

    def accepts(self, obj: Any) -> bool:
        return True

    def encode(self, obj: Any) -> tuple[dict[str, Any], Any]:
        buffers: list[pickle.PickleBuffer] = []
        data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        fields = {f"buffer{i}": np.frombuffer(b.raw(), dtype=np.uint8) for i, b in enumerate(buffers)}
        return fields, data

    def decode(self, fields: dict[str, Any], meta: Any) -> Any:
        return pickle.loads(meta, buffers=[fields[f"buffer{i}"] for i in range(len(fields))])


class CodecRegistry:
    """Picks a codec per object: user codecs first, then the built-ins, pickle5 last."""

    def __init__(self, extra: list[Codec] | tuple[Codec, ...] = ()) -> None:
        extra = tuple(extra)  # a generator would be used up by the first of the two uses below
        walker, scalar, array = WalkerCodec(), ScalarCodec(), ArrayCodec()
        self.codecs: list[Codec] = [*extra, walker, scalar, WepyWalkerCodec(),
                                    *(LazyCodec(*c) for c in LAZY_CODECS), array, Pickle5Codec()]
        self._extra = extra
        #: user codecs come first: they may claim even a plain number
        self.custom = bool(extra)
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
