# cython: language_level=3
# cython: binding=True
# cython: embedsignature=True
"""Typed access to one slot's header in a ring segment: :class:`SlotHeader`, made by ``Ring.header(slot)``."""

cimport cython
from libc.stdint cimport int32_t, int64_t, uint64_t

__all__ = ["SlotHeader"]


@cython.final
@cython.auto_pickle(False)
cdef class SlotHeader:
    """One slot's header (struct wm_slot_header), field by field as typed C: what numpy's structured views
    cost per field is most of a small walker's bookkeeping. The process that popped the slot's index owns
    its header; pushing the index publishes it.
    """

    cdef wm_slot_header *_h(self) except NULL:
        if self._seg == NULL:
            raise ValueError("a SlotHeader is made by Ring.header(slot)")
        if self._seg.base == NULL:
            raise ValueError("ring released")
        return self._hdr

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
