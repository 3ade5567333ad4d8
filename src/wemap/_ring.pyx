# cython: language_level=3
# cython: binding=True
# cython: embedsignature=True
"""Thin binding of the C slot ring (csrc/ring.h): create/attach, push/pop, slot views.

A :class:`Ring` lives in any writable, C-contiguous, 64-byte aligned buffer; in
wemap that is a ``multiprocessing.shared_memory.SharedMemory`` buffer managed by
:mod:`wemap.segment`.  Blocking pops release the GIL and sleep until a slot, a
close, an interrupt, the timeout or a signal (whose handlers then run, so Ctrl-C
works): nothing wakes periodically.  A segment's layout is computed and checked in
:mod:`wemap._layout`; a slot header's fields are :class:`wemap._slot_header.SlotHeader`.
"""

cimport cython
from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_CheckSignals
from cpython.number cimport PyNumber_Index
from libc.errno cimport errno
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memset

from wemap._layout cimport compute_layout, raise_bad_header
from wemap._ring_h cimport (WM_ALIGN, WM_BAD_INDEX, WM_BAD_LAYOUT, WM_BAD_MAGIC, WM_BAD_VERSION, WM_CLOSED,
                            WM_CORRUPT, WM_DONE, WM_EMPTY, WM_FULL, WM_INTERRUPTED, WM_INVALID, WM_OK, WM_READY,
                            WM_SIGNALED, WM_SYSERR, WM_TIMEOUT, WM_TRUNCATED, WM_WAKE_FAILED, wm_close, wm_interrupt,
                            wm_interrupt_epoch, wm_is_closed, wm_layout_t, wm_now_ns, wm_pop_epoch, wm_push,
                            wm_seg_attach, wm_seg_init, wm_slot_header_ptr, wm_slot_input, wm_slot_output)
from wemap cimport _slot_header

import logging
import os
import queue

import numpy as np

from wemap._slot_header import SlotHeader  # what Ring.header returns, importable from here
from wemap.errors import RingCorruptError

_log = logging.getLogger("wemap.ring")

__all__ = ["Ring", "RingClosed", "SlotHeader", "now_ns"]


class RingClosed(Exception):
    """The ring was closed and holds nothing more to pop."""


def now_ns():
    """Return CLOCK_MONOTONIC in nanoseconds: the clock slot times are stamped with."""
    return wm_now_ns()


# -- statuses ----------------------------------------------------------------------

#: status -> (exception, message); callers with more context (slot numbers, header values)
#: raise a more specific message themselves before falling back to these
_ERRORS = {
    WM_FULL: (queue.Full, "ring full"),
    WM_EMPTY: (queue.Empty, "ring empty"),
    WM_TIMEOUT: (TimeoutError, "timed out waiting for the ring"),
    WM_CLOSED: (RingClosed, "ring closed"),
    WM_INTERRUPTED: (InterruptedError, "ring wait interrupted"),
    WM_SIGNALED: (InterruptedError, "ring wait interrupted by a signal"),
    WM_BAD_INDEX: (IndexError, "slot index out of range"),
    WM_BAD_MAGIC: (RingCorruptError, "not a wemap segment (bad magic)"),
    WM_BAD_VERSION: (RingCorruptError, "unsupported segment layout version"),
    WM_BAD_LAYOUT: (RingCorruptError, "segment header geometry is inconsistent"),
    WM_TRUNCATED: (RingCorruptError, "truncated segment"),
    WM_INVALID: (ValueError, "invalid argument to the ring"),
    WM_CORRUPT: (RingCorruptError, "a ring's cells contradict its positions: something wrote into the segment"),
}


cdef int _check_status(int st) except -1:
    """Raise the exception for a ring status; the one place statuses become exceptions."""
    if st == WM_OK:
        return 0
    if st == WM_SYSERR:
        e = errno
        raise OSError(e, os.strerror(e))
    exc, message = _ERRORS.get(st, (RuntimeError, f"unknown ring status {st}"))
    raise exc(message)


@cython.auto_pickle(False)
cdef class Ring:
    """Two slot-index rings (ready, done) and the slots, in a caller's buffer.

    ``Ring(buffer, create=True, nslots=..., region_size=...)`` initialises a new
    segment in ``buffer`` (:func:`wemap._layout.required_size` bytes at least);
    ``Ring(buffer)`` attaches to an existing one and validates its header
    (:class:`~wemap.errors.RingCorruptError` if it is not a usable wemap segment).
    The buffer is held (a Py_buffer) until :meth:`release`.
    """

    def __init__(self, buffer, *, bint create=False, nslots=None, region_size=None):
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
                compute_layout(nslots, region_size, &want)
                if want.total_size > length:
                    raise ValueError(
                        f"buffer has {length} bytes; a ring of {want.nslots} slots x "
                        f"{want.region_size} bytes needs {want.total_size}")
                _check_status(wm_seg_init(&self._seg, self._view.buf, length, want.nslots,
                                          want.region_size, <int32_t>os.getpid()))
            elif nslots is not None or region_size is not None:
                raise TypeError("nslots and region_size are for create=True: attaching reads the header's")
            else:
                st = wm_seg_attach(&self._seg, self._view.buf, length)
                if st != WM_OK:
                    raise_bad_header(st, &self._seg.layout, self._view.buf, length)
                    _check_status(st)
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

    # -- geometry --------------------------------------------------------------

    @property
    def nslots(self):
        """Number of slots."""
        self._live()
        return self._seg.layout.nslots

    @property
    def region_size(self):
        """Bytes of each slot's input and output region (a multiple of 64)."""
        self._live()
        return self._seg.layout.region_size

    @property
    def creator_pid(self):
        """Pid recorded in the header by whoever created the segment."""
        self._live()
        return self._seg.layout.creator_pid

    @property
    def ready_closed(self):
        """Whether close_ready() has been called (by any process)."""
        self._live()
        return bool(wm_is_closed(&self._seg, WM_READY))

    # -- internals -------------------------------------------------------------

    cdef int _live(self) except -1:
        if self._seg.base == NULL:
            raise ValueError("ring released")
        return 0

    cdef uint32_t _slot(self, object slot) except? 0xFFFFFFFF:
        cdef long long s
        self._live()
        try:
            s = PyNumber_Index(slot)  # ints and numpy integers; TypeError for floats
        except OverflowError:
            raise IndexError(f"slot {slot} out of range 0..{self._seg.layout.nslots - 1}") from None
        if s < 0 or s >= self._seg.layout.nslots:
            raise IndexError(f"slot {s} out of range 0..{self._seg.layout.nslots - 1}")
        return <uint32_t>s

    cdef int _push(self, int ring, object slot) except -1:
        cdef uint32_t s = self._slot(slot)
        cdef int st
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

    cdef object _pop(self, int ring, object timeout, object epoch):
        cdef uint32_t slot = 0, ep
        cdef int st
        cdef bint forever = timeout is None
        cdef uint64_t deadline = 0, now
        cdef int64_t wait_ns = -1
        cdef double t
        if not forever:
            t = timeout
            if not t >= 0:  # also rejects NaN
                raise ValueError(f"timeout must be a non-negative number or None, got {timeout!r}")
        self._live()
        self._busy += 1
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

    def pop_ready(self, timeout=None):
        """Wait for a slot from the ready ring; None on timeout (seconds; None waits forever, 0 does not wait).

        Raises RingClosed once the ring is closed and empty.
        """
        return self._pop(WM_READY, timeout, None)

    def pop_done(self, timeout=None, epoch=None):
        """Wait for a slot from the done ring; None on timeout or on an interrupt (:meth:`interrupt_done`).

        ``epoch``: :meth:`done_epoch` taken before the caller last looked for a result, so an
        interrupt since then ends the wait at once (default: now).
        """
        return self._pop(WM_DONE, timeout, epoch)

    def done_epoch(self):
        """The done ring's interrupt count, for :meth:`pop_done`'s ``epoch``."""
        self._live()
        return wm_interrupt_epoch(&self._seg, WM_DONE)

    def close_ready(self):
        """Close the ready ring: once empty, pops raise RingClosed (workers' stop signal)."""
        self._live()
        _check_status(wm_close(&self._seg, WM_READY))

    def interrupt_done(self):
        """Make every pop_done now blocked (in any process) return None.

        For the manager's watcher thread (wemap.shm.watcher): it wakes the
        manager when a worker dies, writes to its pipe, or a timeout is due.
        """
        self._live()
        _check_status(wm_interrupt(&self._seg, WM_DONE))

    # -- slots -------------------------------------------------------------------------

    def input_view(self, slot):
        """Return the slot's input region as a writable, zero-copy uint8 array."""
        return self._region(wm_slot_input(&self._seg, self._slot(slot)))

    def output_view(self, slot):
        """Return the slot's output region as a writable, zero-copy uint8 array."""
        return self._region(wm_slot_output(&self._seg, self._slot(slot)))

    cdef object _region(self, void *start):
        return np.frombuffer(self._obj, dtype=np.uint8, count=self._seg.layout.region_size,
                             offset=<size_t>(<unsigned char *>start - self._seg.base))

    def header(self, slot):
        """Return typed access to the slot's header (a :class:`~wemap._slot_header.SlotHeader`)."""
        cdef _slot_header.SlotHeader h = _slot_header.SlotHeader.__new__(_slot_header.SlotHeader)
        h._hdr = wm_slot_header_ptr(&self._seg, self._slot(slot))
        h._seg = &self._seg
        h._ring = self
        return h

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
