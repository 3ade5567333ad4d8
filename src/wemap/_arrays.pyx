# cython: language_level=3
# cython: binding=True
# cython: embedsignature=True
"""Typed helpers for moving arrays in and out of shared memory.

The per-walker steps that cost more as Python calls than as the bytes they move: where an
array's buffer starts, and one call that copies a walker's arrays to their offsets in a block.
Nothing here knows the ring.
"""

from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_STRIDES, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uintptr_t
from libc.string cimport memmove, strchr

__all__ = ["data_address", "copy_arrays"]

#: copies of at least this many bytes in all run without the GIL
cdef Py_ssize_t _NOGIL_COPY_BYTES = 64 * 1024


def data_address(obj):
    """Return the address of the first byte of ``obj``'s buffer (an ndarray, read-only or strided too).

    What ``arr.__array_interface__["data"][0]`` gives, without building that dict: the
    manager asks it of every array of every walker (is it in the result arena?).
    """
    cdef Py_buffer view
    PyObject_GetBuffer(obj, &view, PyBUF_STRIDES)
    cdef uintptr_t addr = <uintptr_t>view.buf
    PyBuffer_Release(&view)
    return addr


def copy_arrays(dst, offsets, arrays):
    """Copy each of ``arrays`` (C-contiguous buffers of plain data) byte for byte to byte ``offsets[k]``
    of ``dst`` (a writable C-contiguous buffer): what ``np.copyto`` into a view at that offset does
    for an array of the view's dtype and shape, without making the views.

    ``BufferError`` when ``dst`` or an array is not C-contiguous, or an array holds Python objects
    (its format has an ``O``: lay those out with ``np.copyto``); ``ValueError`` for an array that
    does not fit ``dst`` at its offset. Nothing is copied unless everything checks. Every buffer
    is held until the copies are done, so nothing can free or resize a source meanwhile. Overlaps
    are allowed. Copies of 64 KiB or more in all run without the GIL.
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
