# cython: language_level=3
# cython: binding=True
"""Where a call's array fields go: the typed loop over a walker's fields (`Placement.fields`).

Both sides of the shared-memory mapper run it for every walker: the manager for each call it
sends, a worker for each result. An array that already lies, C-contiguous, within one block
of the arena (one of ``allowed`` when given) is referred to where it is; any other array is
to be copied into the call's own block, at the next 64-byte boundary.
"""

from cpython.buffer cimport PyBUF_STRIDES, PyBuffer_IsContiguous, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uintptr_t

import numpy as np

__all__ = ["Placement", "FieldError"]

cdef object _ndarray = np.ndarray
cdef Py_ssize_t _ALIGN = 64


class FieldError(ValueError):
    """A field that cannot travel through shared memory (its name or its dtype)."""


cdef class Placement:
    """One call's array fields: those to copy (``copies`` at ``offsets``, ``cursor`` bytes in all) and
    the blocks the others lie in (``refs``, in first-use order).

    ``describe(dtype)``: how a layout names the dtype, or None for an array that travels as a value.
    ``base``, ``span``: the arena's first byte and length as this process maps it (span 0: no
    arena, every array is copied); ``allowed``: the block numbers a field may be referred to in
    (None: any).
    """

    cdef readonly list copies, offsets, refs
    cdef readonly Py_ssize_t cursor, array_bytes, largest
    cdef object describe, allowed
    cdef uintptr_t base
    cdef Py_ssize_t span, block_size

    def __init__(self, describe, uintptr_t base=0, Py_ssize_t span=0, Py_ssize_t block_size=1, allowed=None):
        if block_size <= 0 or span < 0:
            raise ValueError(f"blocks of {block_size} bytes in {span}")
        self.describe, self.allowed = describe, allowed
        self.base, self.span, self.block_size = base, span, block_size
        self.copies, self.offsets, self.refs = [], [], []
        self.cursor = self.array_bytes = self.largest = 0

    def fields(self, dict fields, list values):
        """Each field as a layout names it: ``(name, dtype, shape, entry, offset)`` for an array in
        a block (entry 0: the call's own block, k: ``refs[k - 1]``), ``(name,)`` for a value,
        which is appended to ``values``. `FieldError` for a name that is not a string or an array
        of Python objects."""
        cdef list described = []
        cdef Py_buffer view
        cdef Py_ssize_t nbytes, offset, entry, block
        cdef uintptr_t addr
        cdef bint contiguous
        for name, v in fields.items():
            if type(name) is not str:
                raise FieldError(f"a field named {name!r}, not by a string")
            if type(v) is _ndarray:
                dt = v.dtype
                if dt.hasobject:
                    raise FieldError(f"field {name!r} has dtype {dt} (Python objects), which cannot travel "
                                     f"through shared memory; use a numeric dtype or keep it out of the walker state")
                desc = self.describe(dt)
                if desc is not None:
                    PyObject_GetBuffer(v, &view, PyBUF_STRIDES)
                    addr = <uintptr_t>view.buf
                    nbytes = view.len
                    contiguous = PyBuffer_IsContiguous(&view, b'C')
                    PyBuffer_Release(&view)
                    if nbytes > self.largest:
                        self.largest = nbytes
                    self.array_bytes += (nbytes + _ALIGN - 1) & ~(_ALIGN - 1)
                    block = self._block_of(addr, nbytes, contiguous)
                    if block < 0:
                        entry, offset = 0, self.cursor
                        self.copies.append(v)
                        self.offsets.append(offset)
                        self.cursor = (offset + nbytes + _ALIGN - 1) & ~(_ALIGN - 1)
                    else:
                        offset = <Py_ssize_t>(addr - self.base) - block * self.block_size
                        try:
                            entry = self.refs.index(block) + 1
                        except ValueError:
                            self.refs.append(block)
                            entry = len(self.refs)
                    described.append((name, desc, v.shape, entry, offset))
                    continue
            described.append((name,))
            values.append(v)
        return tuple(described)

    cdef Py_ssize_t _block_of(self, uintptr_t addr, Py_ssize_t nbytes, bint contiguous):
        """The block an array lies wholly in, or -1."""
        cdef Py_ssize_t offset, block
        if not contiguous or addr < self.base or addr - self.base >= <uintptr_t>self.span:
            return -1
        offset = <Py_ssize_t>(addr - self.base)
        block = offset // self.block_size
        if offset - block * self.block_size + nbytes > self.block_size:
            return -1
        if self.allowed is not None and block not in self.allowed:
            return -1
        return block
