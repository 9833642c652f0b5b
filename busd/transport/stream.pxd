# Types for the compiled twin of stream.py (Cython, pure-Python mode: stream.py is the source).
# Stream is an extension type: its counters and flags are C fields, and the read and write loops
# call the header parse of busd.wire.message at C level. The per-side limits (max_message_size, ...)
# stay Python attributes: the server side makes them properties over the bus's reloadable limits.
cimport cython
from busd.wire.message cimport Header, frame_size, parse_header

# A large message is read into the bytes object it becomes (stream.py's _start_frame): a bytes of the
# frame's size not yet filled, and a writable view of its memory, kept only until it is filled.
cdef extern from *:
    """
    static PyObject *busd_uninitialised_bytes(Py_ssize_t size) {
        return PyBytes_FromStringAndSize(NULL, size);
    }
    static PyObject *busd_writable_view(PyObject *data) {
        return PyMemoryView_FromMemory(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), PyBUF_WRITE);
    }
    """
    object uninitialised_bytes "busd_uninitialised_bytes" (Py_ssize_t size)
    object writable_view "busd_writable_view" (object data)


cdef class Stream:
    cdef public object loop
    cdef public object schedule_flush
    cdef public object sock
    cdef public int fileno
    cdef public bint can_pass_fds
    cdef public bint closed
    cdef public bint reading
    cdef public int _holds
    cdef public bytearray _rbuf
    cdef public object checking
    cdef public list _received_fds
    cdef public list _out
    cdef public Py_ssize_t _out_start
    cdef public Py_ssize_t out_bytes
    cdef public Py_ssize_t out_fds
    cdef public Py_ssize_t peak_out_bytes
    cdef public Py_ssize_t in_bytes
    cdef public Py_ssize_t peak_in_bytes
    cdef public list received
    cdef public list sent
    cdef public unsigned long long bytes_read
    cdef public unsigned long long bytes_written
    cdef public bint _writing
    cdef public bint _flush_scheduled
    cdef public object _frame_buffer
    cdef public object _frame_view
    cdef public Py_ssize_t _frame_filled

    @cython.locals(size=Py_ssize_t, pos=Py_ssize_t, total=Py_ssize_t, unfinished=Py_ssize_t,
                   max_size=Py_ssize_t, large=Py_ssize_t,
                   rbuf=bytearray, message=bytes)
    cpdef feed(self, object data)

    @cython.locals(h=Header)
    cpdef _frame(self, bytes message)

    @cython.locals(size=Py_ssize_t)
    cpdef queue(self, object head, object body, object fds=*)

    cpdef bint has_output(self)

    cpdef queue_bytes(self, bytes data)

    @cython.locals(sent=Py_ssize_t, n=Py_ssize_t, i=Py_ssize_t, start=Py_ssize_t, out=list, buffers=list)
    cpdef flush(self)
