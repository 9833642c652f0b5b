# Types for the compiled twin of message.py (Cython, pure-Python mode: message.py is the source).
# Header is a C struct to compiled code; the functions on the per-message path take typed locals.
cimport cython


cdef class Header:
    cdef public int endian
    cdef public int type
    cdef public int flags
    cdef public unsigned int body_len
    cdef public unsigned int serial
    cdef public unsigned int fields_len
    cdef public Py_ssize_t body_start
    cdef public object path
    cdef public object interface
    cdef public object member
    cdef public object error_name
    cdef public object reply_serial
    cdef public object destination
    cdef public object sender
    cdef public object signature
    cdef public unsigned int unix_fds
    cdef public object sender_span
    cdef public object unknown_spans


@cython.locals(endian=cython.int, body_len=cython.ulonglong, fields_len=cython.ulonglong,
               total=cython.ulonglong, serial=cython.uint)
cpdef Py_ssize_t frame_size(object buf, Py_ssize_t offset=*, Py_ssize_t max_message_size=*) except -1

cpdef Header _copy_fields(Header template)

@cython.locals(size=Py_ssize_t, endian=cython.int, mtype=cython.int, body_len=cython.ulonglong,
               serial=cython.ulonglong, fields_len=cython.ulonglong, fields_end=Py_ssize_t,
               body_start=Py_ssize_t, reply_at=Py_ssize_t, reply_serial=cython.ulonglong,
               h=Header, template=Header, data=bytes)
cpdef Header parse_header(object buf, bint validate_body=*)

@cython.locals(fields_end=Py_ssize_t, start=Py_ssize_t, stop=Py_ssize_t, next_field=Py_ssize_t,
               gap=Py_ssize_t, new_fields_len=Py_ssize_t, tail_pad=Py_ssize_t, kept=bytes)
cpdef tuple stamp_sender(object buf, Header h, bytes field)
