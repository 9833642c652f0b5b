# Types for the compiled twin of served.py (Cython, pure-Python mode: served.py is the source). ServedStream
# is an extension type: the read's hand-over to the bus and the flush's report back are C calls from the
# stream's loops, and its per-message fields are C fields (Connection, a Python subclass, adds the rest).
from busd.transport.stream cimport Stream, read_peer_credentials


cdef class ServedStream(Stream):
    cdef public object bus
    cdef public object label
    cdef public object auth
    cdef public object peer
    cdef public Py_ssize_t dropped_broadcasts
    cdef public bint _input_charged

    cpdef data_received(self, object data)
    cpdef input_ended(self)
    cpdef charge_input(self)
    cpdef message_received(self, object message, object h, object fds)
    cpdef flushed(self)
