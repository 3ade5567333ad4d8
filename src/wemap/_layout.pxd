# What wemap._ring cimports from wemap._layout.

from wemap._ring_h cimport wm_layout_t


cdef int compute_layout(object nslots, object region_size, wm_layout_t *out) except -1
cdef int raise_bad_header(int st, const wm_layout_t *L, const void *mem, size_t length) except -1
