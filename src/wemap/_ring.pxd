# Ring's C fields and methods, for the class in _ring.pyx and any Cython code that cimports Ring.

from cpython.buffer cimport Py_buffer
from libc.stdint cimport uint32_t

from wemap._ring_h cimport wm_seg_t


cdef class Ring:
    cdef wm_seg_t _seg        # validated geometry; _seg.base is NULL once released
    cdef Py_buffer _view      # the buffer held from __init__ until release()
    cdef bint _has_view       # whether _view holds a buffer
    cdef object _obj          # the exporting object, which numpy views are made over
    cdef int _busy            # calls running without the GIL (release() refuses meanwhile)
    cdef object __weakref__

    cdef int _live(self) except -1
    cdef uint32_t _slot(self, object slot) except? 0xFFFFFFFF
    cdef int _push(self, int ring, object slot) except -1
    cdef object _pop(self, int ring, object timeout, object epoch)
    cdef object _region(self, void *start)
