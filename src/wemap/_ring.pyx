# cython: language_level=3
# cython: binding=True
# cython: embedsignature=True
"""Binding of the C slot ring (csrc/ring.h): a segment's layout, and the :class:`Ring` in a caller's buffer.

Blocking pops release the GIL and sleep until a slot, a close, an interrupt, the timeout or a signal
(whose handlers then run, so Ctrl-C works): nothing wakes periodically.
"""

from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE, Py_buffer, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_CheckSignals
from cpython.number cimport PyNumber_Index
from libc.errno cimport errno
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memset

from wemap._ring_h cimport (WM_ALIGN, WM_BAD_INDEX, WM_BAD_LAYOUT, WM_BAD_MAGIC, WM_BAD_VERSION, WM_CLOSED,
                            WM_CORRUPT, WM_DONE, WM_FULL, WM_HEADER_SIZE, WM_INTERRUPTED, WM_LAYOUT_VERSION,
                            WM_MAGIC, WM_MAX_SLOTS, WM_OK, WM_READY, WM_SIGNALED, WM_SLOT_HEADER_SIZE, WM_SYSERR,
                            WM_TIMEOUT, WM_TRUNCATED, WM_WAKE_FAILED, wm_close, wm_interrupt, wm_interrupt_epoch,
                            wm_is_closed, wm_layout, wm_layout_t, wm_now_ns, wm_pop_epoch, wm_push, wm_seg_attach,
                            wm_seg_init, wm_seg_t, wm_slot_header_ptr, wm_slot_input, wm_slot_output)
from wemap cimport _slot_header

import logging
import os
import queue

import numpy as np

from wemap._slot_header import SlotHeader  # what Ring.header returns, importable from here
from wemap.errors import RingCorruptError

_log = logging.getLogger("wemap.ring")

__all__ = ["Ring", "RingClosed", "SlotHeader", "now_ns", "required_size", "layout", "MAX_SLOTS"]

#: the most slots a segment can have
MAX_SLOTS = WM_MAX_SLOTS

cdef uint64_t _MAX_REGION = (1 << 63) - 1


class RingClosed(Exception):
    """The ring was closed and holds nothing more to pop."""


def now_ns():
    """Return CLOCK_MONOTONIC in nanoseconds: the clock slot times are stamped with."""
    return wm_now_ns()


# -- layout --------------------------------------------------------------------------

def required_size(nslots, region_size):
    """Return the bytes a segment of ``nslots`` slots needs (each region rounded up to 64)."""
    cdef wm_layout_t L
    _compute_layout(nslots, region_size, &L)
    return L.total_size


def layout(nslots, region_size):
    """Return every offset and size of a segment's layout, as a dict."""
    cdef wm_layout_t L
    _compute_layout(nslots, region_size, &L)
    return _layout_dict(&L)


cdef dict _layout_dict(const wm_layout_t *L):
    cdef dict d = L[0]  # Cython makes a struct a dict of its fields
    del d["creator_pid"], d["version"]  # the header's, not the geometry's
    d["slot_header_size"] = WM_SLOT_HEADER_SIZE
    return d


cdef int _compute_layout(object nslots, object region_size, wm_layout_t *out) except -1:
    n = int(nslots)
    r = int(region_size)
    if not 1 <= n <= WM_MAX_SLOTS:
        raise ValueError(f"nslots must be in 1..{WM_MAX_SLOTS}, got {n}")
    if not 0 <= r <= _MAX_REGION:
        raise ValueError(f"region_size must be in 0..{_MAX_REGION}, got {r}")
    if wm_layout(<uint32_t>n, <uint64_t>r, out) != WM_OK:
        raise ValueError(f"a segment of {n} slots x 2 x {r} bytes is too large to address")
    return 0


cdef int _raise_bad_header(int st, const wm_layout_t *L, const void *mem, size_t length) except -1:
    """Raise what wm_seg_attach's status ``st`` says is wrong with a header (``L``: the header's values)."""
    cdef wm_layout_t want
    if st == WM_BAD_MAGIC:
        raise RingCorruptError(
            f"not a wemap segment: magic 0x{(<const uint64_t *>mem)[0]:016x}, expected 0x{WM_MAGIC:016x}")
    if st == WM_BAD_VERSION:
        raise RingCorruptError(
            f"unsupported segment layout version {L.version} vs {WM_LAYOUT_VERSION} "
            "(made by a different wemap version)")
    if st == WM_TRUNCATED and length < WM_HEADER_SIZE:
        raise RingCorruptError(
            f"truncated: mapping has {length} bytes, less than the {WM_HEADER_SIZE}-byte header")
    if st == WM_TRUNCATED:
        raise RingCorruptError(f"truncated: header says {L.total_size} bytes, mapping has {length}")
    if st == WM_BAD_LAYOUT and wm_layout(L.nslots, L.region_size, &want) != WM_OK:
        raise RingCorruptError(
            f"bad geometry: header says nslots={L.nslots}, region_size={L.region_size}, "
            "which is no valid layout")
    if st == WM_BAD_LAYOUT:
        stored, expect = _layout_dict(L), _layout_dict(&want)
        wrong = [f"{k}={stored[k]} (expected {expect[k]})"
                 for k in ("header_size", "ring_capacity", "region_size", "slot_stride",
                           "ready_offset", "done_offset", "slots_offset", "total_size")
                 if stored[k] != expect[k]]
        raise RingCorruptError(f"bad geometry for nslots={L.nslots}: header says " + ", ".join(wrong))
    return _check_status(st)


# -- statuses ------------------------------------------------------------------------

cdef int _check_status(int st) except -1:
    """Raise for a status the caller did not handle itself: a failed system call, a corrupted ring, or a bug."""
    if st == WM_OK:
        return 0
    if st == WM_SYSERR:
        e = errno
        raise OSError(e, os.strerror(e))
    if st == WM_CORRUPT:
        raise RingCorruptError("a ring's cells contradict its positions: something wrote into the segment")
    if st == WM_BAD_INDEX:  # only a pop gets it: the ring held an index its own checks rule out
        raise RingCorruptError("ring delivered a slot index beyond nslots")
    raise RuntimeError(f"unexpected ring status {st}")


cdef class Ring:
    """Two slot-index rings (ready, done) and the slots, in a caller's buffer.

    ``Ring(buffer, create=True, nslots=..., region_size=...)`` initialises a new segment in ``buffer``
    (:func:`required_size` bytes at least, 64-byte aligned); ``Ring(buffer)`` attaches to an existing
    one (:class:`~wemap.errors.RingCorruptError` if it is not a usable wemap segment). The buffer is
    held until :meth:`release`.
    """

    cdef wm_seg_t _seg        # validated geometry; _seg.base is NULL once released
    cdef Py_buffer _view      # the buffer held from __init__ until release()
    cdef bint _has_view       # whether _view holds a buffer
    cdef object _obj          # the exporting object, which numpy views are made over
    cdef int _busy            # calls running without the GIL (release() refuses meanwhile)
    cdef object __weakref__

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
                _compute_layout(nslots, region_size, &want)
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
                    _raise_bad_header(st, &self._seg.layout, self._view.buf, length)
            self._obj = buffer
        except BaseException:
            memset(&self._seg, 0, sizeof(self._seg))
            PyBuffer_Release(&self._view)
            self._has_view = False
            raise

    def __dealloc__(self):
        if self._has_view:
            PyBuffer_Release(&self._view)

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
            with nogil:  # a push can wait (briefly) for a preempted consumer
                st = wm_push(&self._seg, ring, s)
        finally:
            self._busy -= 1
        if st == WM_FULL:
            raise queue.Full(f"{'ready' if ring == WM_READY else 'done'} ring full "
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
        """Wait for a slot from the ready ring; None on timeout (seconds; None waits forever, 0 does not wait),
        RingClosed once the ring is closed and empty."""
        return self._pop(WM_READY, timeout, None)

    def pop_done(self, timeout=None, epoch=None):
        """Wait for a slot from the done ring; None on timeout or on an interrupt (:meth:`interrupt_done`).
        ``epoch``: :meth:`done_epoch` taken before the caller last looked for a result, so an interrupt
        since then ends the wait at once (default: now)."""
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
        """Make every pop_done now blocked (in any process) return None: the manager's watcher thread
        wakes the manager this way (wemap.shm.watcher)."""
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

    def slot_views(self):
        """Return ``(header, input_view, output_view)`` of every slot, in slot order: what a process that fills
        or serves the slots keeps for the ring's lifetime, rather than making three objects per slot it handles."""
        return [(self.header(k), self.input_view(k), self.output_view(k)) for k in range(self.nslots)]

    def release(self):
        """Drop the held buffer so its owner (SharedMemory.close) can unmap it; idempotent. Other methods then
        raise ValueError, views handed out keep their own reference; BufferError while a call is blocked."""
        if not self._has_view:
            return
        if self._busy:
            raise BufferError(f"ring is in use by {self._busy} call(s) blocked in other threads")
        memset(&self._seg, 0, sizeof(self._seg))
        PyBuffer_Release(&self._view)
        self._has_view = False
        self._obj = None
