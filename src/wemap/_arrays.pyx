# cython: language_level=3
# cython: binding=True
# cython: embedsignature=True
"""Typed helpers for moving arrays in and out of shared memory: the per-walker steps that cost more as
Python calls than as the bytes they move. Nothing here knows the ring.
"""

from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_STRIDES, PyBUF_WRITABLE,
                             PyBuffer_IsContiguous, PyBuffer_Release, PyObject_GetBuffer)
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uintptr_t
from libc.string cimport memmove, strchr

import numpy as np

__all__ = ["data_address", "copy_arrays", "Placement", "FieldError"]

#: copies of at least this many bytes in all run without the GIL
cdef Py_ssize_t _NOGIL_COPY_BYTES = 64 * 1024


def data_address(obj):
    """Return the address of the first byte of ``obj``'s buffer (an ndarray, read-only or strided too):
    ``arr.__array_interface__["data"][0]`` without building that dict, for every array of every walker."""
    cdef Py_buffer view
    PyObject_GetBuffer(obj, &view, PyBUF_STRIDES)
    cdef uintptr_t addr = <uintptr_t>view.buf
    PyBuffer_Release(&view)
    return addr


def copy_arrays(dst, offsets, arrays):
    """Copy each of ``arrays`` byte for byte to byte ``offsets[k]`` of the writable buffer ``dst``: what
    ``np.copyto`` into views at those offsets does, without making the views. Overlaps are allowed.

    ``BufferError`` when ``dst`` or an array is not C-contiguous, or an array may hold Python objects
    (lay those out with ``np.copyto``); ``ValueError`` for an array that does not fit ``dst`` at its
    offset. Nothing is copied unless everything checks; every buffer is held until the copies are done.
    """
    cdef Py_ssize_t n = len(arrays)
    cdef Py_ssize_t k, got = 0, total = 0
    cdef Py_ssize_t *offs = NULL
    cdef Py_buffer *bufs = NULL
    cdef Py_buffer dbuf
    cdef bint have_dst = False
    cdef unsigned char *base
    if len(offsets) != n:
        raise ValueError(f"{n} arrays but {len(offsets)} offsets")
    offs = <Py_ssize_t *>PyMem_Malloc((n + 1) * sizeof(Py_ssize_t))
    bufs = <Py_buffer *>PyMem_Malloc((n + 1) * sizeof(Py_buffer))
    try:
        if offs == NULL or bufs == NULL:
            raise MemoryError()
        for k in range(n):  # every Python-level read first: nothing runs between the checks and the copies
            offs[k] = offsets[k]
        try:
            PyObject_GetBuffer(dst, &dbuf, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)
        except (BufferError, ValueError, TypeError) as exc:  # numpy says ValueError
            raise BufferError(f"the destination is not a writable C-contiguous buffer: {exc}") from exc
        have_dst = True
        for k in range(n):
            try:
                PyObject_GetBuffer(arrays[k], &bufs[k], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
            except (BufferError, ValueError, TypeError) as exc:
                raise BufferError(f"array {k} is not a C-contiguous buffer: {exc}") from exc
            got += 1
            if bufs[k].format != NULL and strchr(bufs[k].format, b"O") != NULL:
                raise BufferError(f"array {k} may hold Python objects (format {bufs[k].format.decode()!r})")
            if offs[k] < 0 or offs[k] > dbuf.len - bufs[k].len:
                raise ValueError(f"array {k} ({bufs[k].len} bytes at offset {offs[k]}) does not fit the "
                                 f"{dbuf.len}-byte destination")
            total += bufs[k].len
        base = <unsigned char *>dbuf.buf
        if total >= _NOGIL_COPY_BYTES:
            with nogil:
                for k in range(n):
                    memmove(base + offs[k], bufs[k].buf, <size_t>bufs[k].len)
        else:
            for k in range(n):
                memmove(base + offs[k], bufs[k].buf, <size_t>bufs[k].len)
    finally:
        for k in range(got):
            PyBuffer_Release(&bufs[k])
        if have_dst:
            PyBuffer_Release(&dbuf)
        PyMem_Free(offs)
        PyMem_Free(bufs)


#: fields are laid out in a block at 64-byte boundaries
cdef Py_ssize_t _ALIGN = 64
cdef object _ndarray = np.ndarray


class FieldError(ValueError):
    """A field that cannot travel through shared memory (its name or its dtype)."""


cdef class Placement:
    """Where a call's arrays go, on both sides of the shared-memory mapper: those to copy (``copies`` at
    ``offsets``, ``copy_bytes`` bytes in all) and the arena blocks the others lie in (``refs``, first use first);
    once the call is laid out (`wemap.shm.calls.encode_call`), its ``layout`` and ``values`` (bytes) and
    its ``extras`` (for the pipe) too.

    ``describe(dtype)``: how a layout names the dtype, or None for an array that travels as a value.
    ``base``, ``span``: the arena's first byte and length in this process (span 0: every array is
    copied); ``allowed``: the block numbers a field may be referred to in (None: any).
    """

    cdef readonly list copies, offsets, refs
    cdef public object layout, values, extras
    cdef readonly Py_ssize_t copy_bytes, array_bytes, largest
    cdef object describe, allowed
    cdef uintptr_t base
    cdef Py_ssize_t span, block_size

    def __init__(self, describe, uintptr_t base=0, Py_ssize_t span=0, Py_ssize_t block_size=1, allowed=None):
        if block_size <= 0 or span < 0:
            raise ValueError(f"blocks of {block_size} bytes in {span}")
        self.describe, self.allowed = describe, allowed
        self.base, self.span, self.block_size = base, span, block_size
        self.copies, self.offsets, self.refs = [], [], []
        self.copy_bytes = self.array_bytes = self.largest = 0

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
                        entry, offset = 0, self.copy_bytes
                        self.copies.append(v)
                        self.offsets.append(offset)
                        self.copy_bytes = (offset + nbytes + _ALIGN - 1) & ~(_ALIGN - 1)
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
