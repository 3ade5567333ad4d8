# The fields of SlotHeader, which wemap._ring fills in (Ring.header).

from wemap._ring_h cimport wm_seg_t, wm_slot_header


cdef class SlotHeader:
    cdef object _ring              # the Ring, kept alive: _seg points into it
    cdef const wm_seg_t *_seg      # its segment; _seg.base is NULL once the ring is released
    cdef wm_slot_header *_hdr      # this slot's header in the segment
    cdef wm_slot_header *_h(self) except NULL
