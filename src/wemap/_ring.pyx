# cython: language_level=3
# cython: binding=True
# cython: embedsignature=True
"""Thin binding of the C slot ring (csrc/ring.h): create/attach, push/pop, slot views.

A :class:`Ring` lives in any writable, C-contiguous, 64-byte aligned buffer; in
wemap that is a ``multiprocessing.shared_memory.SharedMemory`` buffer managed by
:mod:`wemap.segment`.  Blocking pops release the GIL and sleep until a slot, a
close, an interrupt, the timeout or a signal (whose handlers then run, so Ctrl-C
works): nothing wakes periodically.
"""

cimport cython
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_STRIDES, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.number cimport PyNumber_Index
from libc.errno cimport errno
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memmove, memset, strchr

import logging
import os
import queue

import numpy as np

from wemap.errors import RingCorruptError

_log = logging.getLogger("wemap.ring")

__all__ = [
    "Ring",
    "RingClosed",
    "SlotHeader",
    "SLOT_HEADER_DTYPE",
    "slot_header_c_fields",
    "now_ns",
    "data_address",
    "copy_arrays",
    "status_name",
    "READY",
    "DONE",
    "MAGIC",
    "LAYOUT_VERSION",
    "HEADER_SIZE",
    "SLOT_HEADER_SIZE",
    "ALIGN",
    "MAX_SLOTS",
]

MAGIC = WM_MAGIC
LAYOUT_VERSION = WM_LAYOUT_VERSION
HEADER_SIZE = WM_HEADER_SIZE
SLOT_HEADER_SIZE = WM_SLOT_HEADER_SIZE
ALIGN = WM_ALIGN
MAX_SLOTS = WM_MAX_SLOTS

cdef uint64_t _MAX_REGION = (1 << 63) - 1

#: numpy dtype of the 128-byte slot header (struct wm_slot_header in ring.h).
SLOT_HEADER_DTYPE = np.dtype({
    "names": ["task_id", "cycle", "walker_idx", "worker_idx", "worker_pid",
              "t_start_ns", "t_end_ns", "in_nbytes", "out_nbytes", "status", "flags"],
    "formats": [np.uint64, np.uint64, np.int64, np.int32, np.int32,
                np.uint64, np.uint64, np.uint64, np.uint64, np.int32, np.int32],
    "offsets": [0, 8, 16, 24, 28, 32, 40, 48, 56, 64, 68],
    "itemsize": WM_SLOT_HEADER_SIZE,
})


class RingClosed(Exception):
    """The ring was closed and holds nothing more to pop."""


def slot_header_c_fields():
    """Return ``{name: (offset, size)}`` of the C slot header, to check the dtype against."""
    cdef size_t n = 0
    cdef const wm_field_desc *f = wm_slot_header_fields(&n)
    return {f[i].name.decode("ascii"): (f[i].offset, f[i].size) for i in range(n)}


def now_ns():
    """Return CLOCK_MONOTONIC in nanoseconds: the clock slot times are stamped with."""
    return wm_now_ns()


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


#: copies of at least this many bytes in all run without the GIL
cdef Py_ssize_t _NOGIL_COPY_BYTES = 64 * 1024


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


def status_name(int status):
    """Return the C name of a ring status code (for messages and tests)."""
    return wm_status_str(status).decode("ascii")


cdef dict _layout_dict(const wm_layout_t *L):
    return {
        "nslots": L.nslots,
        "ring_capacity": L.ring_capacity,
        "region_size": L.region_size,
        "slot_stride": L.slot_stride,
        "header_size": L.header_size,
        "slot_header_size": WM_SLOT_HEADER_SIZE,
        "ring_bytes": L.ring_bytes,
        "ready_offset": L.ready_offset,
        "done_offset": L.done_offset,
        "slots_offset": L.slots_offset,
        "total_size": L.total_size,
    }


cdef int _compute_layout(object nslots, object region_size, wm_layout_t *out) except -1:
    """Validate Python arguments and compute a layout; ValueError on anything bad."""
    n = int(nslots)
    r = int(region_size)
    if not 1 <= n <= WM_MAX_SLOTS:
        raise ValueError(f"nslots must be in 1..{WM_MAX_SLOTS}, got {n}")
    if not 0 <= r <= _MAX_REGION:
        raise ValueError(f"region_size must be in 0..{_MAX_REGION}, got {r}")
    if wm_layout(<uint32_t>n, <uint64_t>r, out) != WM_OK:
        raise ValueError(f"a segment of {n} slots x 2 x {r} bytes is too large to address")
    return 0


cdef int _check_status(int st) except -1:
    """Raise the exception for a ring status; the one place statuses become exceptions.

    Callers with more context (slot numbers, header values) raise a more
    specific message themselves before falling back to this.
    """
    if st == WM_OK:
        return 0
    if st == WM_FULL:
        raise queue.Full("ring full")
    if st == WM_EMPTY:
        raise queue.Empty("ring empty")
    if st == WM_TIMEOUT:
        raise TimeoutError("timed out waiting for the ring")
    if st == WM_CLOSED:
        raise RingClosed("ring closed")
    if st == WM_INTERRUPTED:
        raise InterruptedError("ring wait interrupted")
    if st == WM_SIGNALED:
        raise InterruptedError("ring wait interrupted by a signal")
    if st == WM_BAD_INDEX:
        raise IndexError("slot index out of range")
    if st == WM_BAD_MAGIC:
        raise RingCorruptError("not a wemap segment (bad magic)")
    if st == WM_BAD_VERSION:
        raise RingCorruptError("unsupported segment layout version")
    if st == WM_BAD_LAYOUT:
        raise RingCorruptError("segment header geometry is inconsistent")
    if st == WM_TRUNCATED:
        raise RingCorruptError("truncated segment")
    if st == WM_INVALID:
        raise ValueError("invalid argument to the ring")
    if st == WM_SYSERR:
        e = errno
        raise OSError(e, os.strerror(e))
    if st == WM_CORRUPT:
        raise RingCorruptError("a ring's cells contradict its positions: something wrote into the segment")
    raise RuntimeError(f"unknown ring status {st}")


@cython.auto_pickle(False)
cdef class Ring:
    """Two slot-index rings (ready, done) and the slots, in a caller's buffer.

    ``Ring(buffer, create=True, nslots=..., region_size=...)`` initialises a new
    segment in ``buffer``; ``Ring(buffer)`` attaches to an existing one and
    validates its header (:class:`~wemap.errors.RingCorruptError` if it is not
    a usable wemap segment).  On attach, ``nslots``/``region_size`` given are
    checked against the header.  The buffer is held (a Py_buffer) until
    :meth:`release`.
    """

    def __init__(self, buffer, *, bint create=False, nslots=None, region_size=None,
                 creator_pid=None):
        cdef wm_layout_t want
        cdef int st
        cdef size_t length
        if self._has_view:
            raise RuntimeError("Ring is already initialised")
        PyObject_GetBuffer(buffer, &self._view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)
        self._has_view = True
        try:
            length = <size_t>self._view.len
            if (<uintptr_t>self._view.buf) % WM_ALIGN != 0:
                raise ValueError(
                    f"buffer address 0x{<uintptr_t>self._view.buf:x} is not {WM_ALIGN}-byte "
                    "aligned; use a SharedMemory buffer or an aligned numpy array")
            if create:
                if nslots is None or region_size is None:
                    raise TypeError("Ring(create=True) needs nslots and region_size")
                _compute_layout(nslots, region_size, &want)
                pid = os.getpid() if creator_pid is None else int(creator_pid)
                if not -2**31 <= pid < 2**31:
                    raise ValueError(f"creator_pid {pid} does not fit in 32 bits")
                if want.total_size > length:
                    raise ValueError(
                        f"buffer has {length} bytes; a ring of {want.nslots} slots x "
                        f"{want.region_size} bytes needs {want.total_size}")
                st = wm_seg_init(&self._seg, self._view.buf, length, want.nslots,
                                 want.region_size, <int32_t>pid)
                _check_status(st)
            else:
                st = wm_seg_attach(&self._seg, self._view.buf, length)
                if st != WM_OK:
                    self._raise_attach_error(st, length)
                self._check_expected(nslots, region_size, creator_pid)
            self._obj = buffer
        except BaseException:
            memset(&self._seg, 0, sizeof(self._seg))
            PyBuffer_Release(&self._view)
            self._has_view = False
            raise

    def __dealloc__(self):
        if self._has_view:
            PyBuffer_Release(&self._view)
            self._has_view = False

    def __reduce__(self):
        raise TypeError("a Ring cannot be pickled; pickle its wemap.segment.Segment (by name)")

    def __repr__(self):
        if self._seg.base == NULL:
            return "<Ring released>"
        return (f"<Ring nslots={self._seg.layout.nslots} "
                f"region_size={self._seg.layout.region_size} "
                f"total_size={self._seg.layout.total_size}>")

    # -- construction helpers -------------------------------------------------

    cdef _raise_attach_error(self, int st, size_t length):
        cdef wm_layout_t *L = &self._seg.layout
        cdef wm_layout_t want
        cdef uint64_t found
        if st == WM_BAD_MAGIC:
            found = (<uint64_t *>self._view.buf)[0]
            raise RingCorruptError(
                f"not a wemap segment: magic 0x{found:016x}, expected 0x{WM_MAGIC:016x}")
        if st == WM_BAD_VERSION:
            raise RingCorruptError(
                f"unsupported segment layout version {L.version} vs {WM_LAYOUT_VERSION} "
                "(made by a different wemap version)")
        if st == WM_TRUNCATED:
            if length < WM_HEADER_SIZE:
                raise RingCorruptError(
                    f"truncated: mapping has {length} bytes, less than the "
                    f"{WM_HEADER_SIZE}-byte header")
            raise RingCorruptError(
                f"truncated: header says {L.total_size} bytes, mapping has {length}")
        if st == WM_BAD_LAYOUT:
            if wm_layout(L.nslots, L.region_size, &want) != WM_OK:
                raise RingCorruptError(
                    f"bad geometry: header says nslots={L.nslots}, "
                    f"region_size={L.region_size}, which is no valid layout")
            stored = _layout_dict(L)
            expect = _layout_dict(&want)
            wrong = [f"{k}={stored[k]} (expected {expect[k]})"
                     for k in ("header_size", "ring_capacity", "region_size", "slot_stride",
                               "ready_offset", "done_offset", "slots_offset", "total_size")
                     if stored[k] != expect[k]]
            raise RingCorruptError(
                f"bad geometry for nslots={L.nslots}: header says " + ", ".join(wrong))
        _check_status(st)

    cdef _check_expected(self, nslots, region_size, creator_pid):
        cdef wm_layout_t want
        L = self._seg.layout
        if nslots is not None and int(nslots) != L.nslots:
            raise RingCorruptError(f"geometry: expected {nslots} slots, header says {L.nslots}")
        if region_size is not None:
            _compute_layout(L.nslots, region_size, &want)
            if want.region_size != L.region_size:
                raise RingCorruptError(
                    f"geometry: expected region_size {want.region_size}, "
                    f"header says {L.region_size}")
        if creator_pid is not None and int(creator_pid) != L.creator_pid:
            raise RingCorruptError(
                f"expected a segment made by pid {creator_pid}, header says {L.creator_pid}")

    # -- geometry --------------------------------------------------------------

    @staticmethod
    def required_size(nslots, region_size):
        """Return the bytes a segment of ``nslots`` slots needs (each region rounded to 64)."""
        cdef wm_layout_t L
        _compute_layout(nslots, region_size, &L)
        return L.total_size

    @staticmethod
    def layout(nslots, region_size):
        """Return every offset and size of a segment's layout, as a dict."""
        cdef wm_layout_t L
        _compute_layout(nslots, region_size, &L)
        return _layout_dict(&L)

    @property
    def nslots(self):
        """Number of slots."""
        self._enter_nobusy()
        return self._seg.layout.nslots

    @property
    def region_size(self):
        """Bytes of each slot's input and output region (a multiple of 64)."""
        self._enter_nobusy()
        return self._seg.layout.region_size

    @property
    def ring_capacity(self):
        """Cells per ring (a power of two >= nslots)."""
        self._enter_nobusy()
        return self._seg.layout.ring_capacity

    @property
    def slot_stride(self):
        """Bytes from one slot to the next."""
        self._enter_nobusy()
        return self._seg.layout.slot_stride

    @property
    def slots_offset(self):
        """Offset of slot 0 from the segment base."""
        self._enter_nobusy()
        return self._seg.layout.slots_offset

    @property
    def total_size(self):
        """Bytes the segment occupies (the buffer may be longer)."""
        self._enter_nobusy()
        return self._seg.layout.total_size

    @property
    def creator_pid(self):
        """Pid recorded in the header by whoever created the segment."""
        self._enter_nobusy()
        return self._seg.layout.creator_pid

    @property
    def ready_closed(self):
        """Whether close_ready() has been called (by any process)."""
        self._enter_nobusy()
        return bool(wm_is_closed(&self._seg, WM_READY))

    @property
    def done_closed(self):
        """Whether close_done() has been called (by any process)."""
        self._enter_nobusy()
        return bool(wm_is_closed(&self._seg, WM_DONE))

    @property
    def released(self):
        """Whether release() has been called."""
        return self._seg.base == NULL

    # -- internals -------------------------------------------------------------

    cdef int _enter(self) except -1:
        if self._seg.base == NULL:
            raise ValueError("ring released")
        self._busy += 1
        return 0

    cdef int _enter_nobusy(self) except -1:
        if self._seg.base == NULL:
            raise ValueError("ring released")
        return 0

    cdef uint32_t _slot(self, object slot) except? 0xFFFFFFFF:
        cdef long long s
        try:
            s = PyNumber_Index(slot)  # ints and numpy integers; TypeError for floats
        except OverflowError:
            raise IndexError(f"slot {slot} out of range 0..{self._seg.layout.nslots - 1}") from None
        if s < 0 or s >= self._seg.layout.nslots:
            raise IndexError(f"slot {s} out of range 0..{self._seg.layout.nslots - 1}")
        return <uint32_t>s

    cdef int _push(self, int ring, object slot) except -1:
        cdef uint32_t s
        cdef int st
        self._enter_nobusy()
        s = self._slot(slot)
        self._busy += 1
        try:
            # Without the GIL: a push can wait (briefly) for a preempted consumer.
            with nogil:
                st = wm_push(&self._seg, ring, s)
        finally:
            self._busy -= 1
        if st == WM_FULL:
            raise queue.Full(
                f"{'ready' if ring == WM_READY else 'done'} ring full "
                f"({self._seg.layout.ring_capacity} cells), or a consumer died mid-pop")
        if st == WM_WAKE_FAILED:  # pushed: a sleeping consumer finds it when it next wakes
            _log.warning("slot %d pushed, but waking a waiting process failed: %s", s, os.strerror(errno))
            return 0
        return _check_status(st)

    cdef object _try_pop(self, int ring):
        cdef uint32_t slot = 0
        cdef int st
        self._enter_nobusy()
        st = wm_try_pop(&self._seg, ring, &slot)
        if st == WM_OK:
            return slot
        if st == WM_EMPTY:
            return None
        if st == WM_CLOSED:
            raise RingClosed(f"{'ready' if ring == WM_READY else 'done'} ring closed")
        if st == WM_BAD_INDEX:
            raise RingCorruptError("ring delivered a slot index beyond nslots")
        _check_status(st)

    cdef object _pop(self, int ring, object timeout, object epoch):
        cdef uint32_t slot = 0
        cdef int st
        cdef uint32_t ep
        cdef bint forever = timeout is None
        cdef uint64_t deadline = 0
        cdef uint64_t now
        cdef int64_t wait_ns = -1
        cdef double t
        if not forever:
            t = timeout
            if not t >= 0:  # also rejects NaN
                raise ValueError(f"timeout must be a non-negative number or None, got {timeout!r}")
        self._enter()
        try:
            ep = wm_interrupt_epoch(&self._seg, ring) if epoch is None else <uint32_t>epoch
            if not forever:
                deadline = wm_now_ns() + <uint64_t>min(t * 1e9, 4e18)
            while True:
                if not forever:
                    now = wm_now_ns()
                    wait_ns = <int64_t>(deadline - now) if deadline > now else 0
                with nogil:
                    st = wm_pop_epoch(&self._seg, ring, &slot, wait_ns, ep)
                if st == WM_OK:
                    return slot
                if st == WM_SIGNALED:
                    PyErr_CheckSignals()  # a handler that raises (Ctrl-C) ends the wait
                    continue
                if st == WM_TIMEOUT or st == WM_INTERRUPTED:
                    return None
                if st == WM_CLOSED:
                    raise RingClosed(f"{'ready' if ring == WM_READY else 'done'} ring closed")
                if st == WM_BAD_INDEX:
                    raise RingCorruptError("ring delivered a slot index beyond nslots")
                _check_status(st)
        finally:
            self._busy -= 1

    # -- the rings ---------------------------------------------------------------

    def push_ready(self, slot):
        """Hand a filled slot to the workers (IndexError if out of range, queue.Full if full)."""
        self._push(WM_READY, slot)

    def push_done(self, slot):
        """Hand a finished slot back to the manager."""
        self._push(WM_DONE, slot)

    def pop_ready(self, timeout=None, epoch=None):
        """Wait for a slot from the ready ring; None on timeout or interrupt.

        ``timeout`` in seconds, None waits forever.  ``epoch``: the ring's
        :meth:`epoch` taken before the caller last looked for work, so an
        interrupt since then ends the wait at once (default: now).  Raises
        RingClosed once the ring is closed and empty.
        """
        return self._pop(WM_READY, timeout, epoch)

    def pop_done(self, timeout=None, epoch=None):
        """Wait for a slot from the done ring; None on timeout or interrupt (see :meth:`pop_ready`)."""
        return self._pop(WM_DONE, timeout, epoch)

    def done_epoch(self):
        """The done ring's interrupt count, for :meth:`pop_done`'s ``epoch``."""
        self._enter_nobusy()
        return wm_interrupt_epoch(&self._seg, WM_DONE)

    def try_pop_ready(self):
        """Pop a slot from the ready ring if one is there, else None."""
        return self._try_pop(WM_READY)

    def try_pop_done(self):
        """Pop a slot from the done ring if one is there, else None."""
        return self._try_pop(WM_DONE)

    def close_ready(self):
        """Close the ready ring: once empty, pops raise RingClosed (workers' stop signal)."""
        self._enter_nobusy()
        _check_status(wm_close(&self._seg, WM_READY))

    def close_done(self):
        """Close the done ring."""
        self._enter_nobusy()
        _check_status(wm_close(&self._seg, WM_DONE))

    def interrupt_ready(self):
        """Make every pop_ready now blocked (in any process) return None."""
        self._enter_nobusy()
        _check_status(wm_interrupt(&self._seg, WM_READY))

    def interrupt_done(self):
        """Make every pop_done now blocked (in any process) return None.

        For the manager's watcher thread (wemap.shm.watcher): it wakes the
        manager when a worker dies, writes to its pipe, or a timeout is due.
        """
        self._enter_nobusy()
        _check_status(wm_interrupt(&self._seg, WM_DONE))

    # -- slot views ------------------------------------------------------------------

    def input_view(self, slot):
        """Return the slot's input region as a writable, zero-copy uint8 array."""
        cdef uint32_t s
        self._enter_nobusy()
        s = self._slot(slot)
        return np.frombuffer(self._obj, dtype=np.uint8, count=self._seg.layout.region_size,
                             offset=<size_t>(<unsigned char *>wm_slot_input(&self._seg, s)
                                             - self._seg.base))

    def output_view(self, slot):
        """Return the slot's output region as a writable, zero-copy uint8 array."""
        cdef uint32_t s
        self._enter_nobusy()
        s = self._slot(slot)
        return np.frombuffer(self._obj, dtype=np.uint8, count=self._seg.layout.region_size,
                             offset=<size_t>(<unsigned char *>wm_slot_output(&self._seg, s)
                                             - self._seg.base))

    def header(self, slot):
        """Return typed access to the slot's header (a :class:`SlotHeader`)."""
        cdef SlotHeader h = SlotHeader.__new__(SlotHeader)
        self._enter_nobusy()
        h._slot = self._slot(slot)
        h._ring = self
        return h

    def header_view(self, slot):
        """Return the slot's header as a 0-d structured array (SLOT_HEADER_DTYPE), zero-copy."""
        cdef uint32_t s
        self._enter_nobusy()
        s = self._slot(slot)
        off = self._seg.layout.slots_offset + <uint64_t>s * self._seg.layout.slot_stride
        return np.frombuffer(self._obj, dtype=SLOT_HEADER_DTYPE, count=1,
                             offset=off).reshape(())

    # -- lifetime --------------------------------------------------------------------

    def release(self):
        """Drop the held buffer so its owner (SharedMemory.close) can unmap it.

        Idempotent.  Afterwards every other method raises ValueError("ring
        released").  Views already handed out keep their own reference to the
        buffer.  BufferError while another thread is blocked in a pop or push.
        """
        if not self._has_view:
            return
        if self._busy:
            raise BufferError(
                f"ring is in use by {self._busy} call(s) blocked in other threads")
        memset(&self._seg, 0, sizeof(self._seg))
        PyBuffer_Release(&self._view)
        self._has_view = False
        self._obj = None

    # -- test hooks --------------------------------------------------------------------

    def _debug_set_positions(self, int ring, uint64_t pos):
        """Move an empty, idle ring's free-running positions to ``pos`` (tests only)."""
        self._enter_nobusy()
        st = wm_debug_set_positions(&self._seg, ring, pos)
        if st == WM_FULL:
            raise ValueError("ring is not empty")
        _check_status(st)

    def _debug_positions(self, int ring):
        """Return ``(head, tail)`` of a ring (tests only)."""
        cdef uint64_t head = 0, tail = 0
        self._enter_nobusy()
        _check_status(wm_debug_positions(&self._seg, ring, &head, &tail))
        return head, tail


@cython.final
@cython.auto_pickle(False)
cdef class SlotHeader:
    """One slot's header (struct wm_slot_header), read and written field by field as typed C.

    The process that popped the slot's index owns its header; pushing the index publishes it.
    What numpy's structured views cost per field (a few microseconds) is most of a small walker's
    bookkeeping, so the manager and the workers use this instead (bench/README.md).
    """

    cdef wm_slot_header *_h(self) except NULL:
        if self._ring._seg.base == NULL:
            raise ValueError("ring released")
        return wm_slot_header_ptr(&self._ring._seg, self._slot)

    def reset(self, uint64_t task_id, uint64_t cycle, int64_t walker_idx):
        """Ready the header for a walker going out: its task, cycle and index; unclaimed, no status."""
        cdef wm_slot_header *h = self._h()
        h.task_id, h.cycle, h.walker_idx = task_id, cycle, walker_idx
        h.worker_idx, h.worker_pid, h.t_start_ns, h.t_end_ns = -1, 0, 0, 0
        h.in_nbytes, h.out_nbytes, h.status, h.flags = 0, 0, -1, 0

    @property
    def task_id(self):
        return self._h().task_id

    @task_id.setter
    def task_id(self, uint64_t v):
        self._h().task_id = v

    @property
    def cycle(self):
        return self._h().cycle

    @property
    def walker_idx(self):
        return self._h().walker_idx

    @property
    def worker_idx(self):
        return self._h().worker_idx

    @worker_idx.setter
    def worker_idx(self, int32_t v):
        self._h().worker_idx = v

    @property
    def worker_pid(self):
        return self._h().worker_pid

    @worker_pid.setter
    def worker_pid(self, int32_t v):
        self._h().worker_pid = v

    @property
    def t_start_ns(self):
        return self._h().t_start_ns

    @t_start_ns.setter
    def t_start_ns(self, uint64_t v):
        self._h().t_start_ns = v

    @property
    def t_end_ns(self):
        return self._h().t_end_ns

    @t_end_ns.setter
    def t_end_ns(self, uint64_t v):
        self._h().t_end_ns = v

    @property
    def in_nbytes(self):
        return self._h().in_nbytes

    @in_nbytes.setter
    def in_nbytes(self, uint64_t v):
        self._h().in_nbytes = v

    @property
    def out_nbytes(self):
        return self._h().out_nbytes

    @out_nbytes.setter
    def out_nbytes(self, uint64_t v):
        self._h().out_nbytes = v

    @property
    def status(self):
        return self._h().status

    @status.setter
    def status(self, int32_t v):
        self._h().status = v

    @property
    def flags(self):
        return self._h().flags

    @flags.setter
    def flags(self, int32_t v):
        self._h().flags = v


READY = WM_READY
DONE = WM_DONE
