# Types for the compiled twin of message.py (Cython, pure-Python mode: message.py is the source).
# Header is a C struct to compiled code; the functions on the per-message path take typed locals.
cimport cython

# The compiled twin reads integers and scans bytes in C instead of through struct and bytes' methods
# (a Ping's frame_size took 0.6 µs, its parse 2.3 µs, its stamp 1.3 µs). Each helper answers only what it
# can answer cheaply; on anything else the Python code beside it runs, so the twins raise the same errors.
cdef extern from *:
    """
    #include <string.h>
    static CYTHON_INLINE unsigned int busd_u32_at(PyObject *data, Py_ssize_t pos, int endian) {
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data) + pos;
        if (endian == 'B')
            return (unsigned int)p[0] << 24 | (unsigned int)p[1] << 16 | (unsigned int)p[2] << 8 | p[3];
        return (unsigned int)p[3] << 24 | (unsigned int)p[2] << 16 | (unsigned int)p[1] << 8 | p[0];
    }
    /* The size of the message at `offset` of a bytes or bytearray, or -1: let the Python code decide. */
    static CYTHON_INLINE Py_ssize_t busd_frame_size(PyObject *buf, Py_ssize_t offset, Py_ssize_t max_size,
                                      unsigned long long max_fields) {
        const unsigned char *p;
        Py_ssize_t size;
        unsigned long long body_len, fields_len, total;
        if (PyBytes_CheckExact(buf)) {
            p = (const unsigned char *)PyBytes_AS_STRING(buf);
            size = PyBytes_GET_SIZE(buf);
        } else if (PyByteArray_CheckExact(buf)) {
            p = (const unsigned char *)PyByteArray_AS_STRING(buf);
            size = PyByteArray_GET_SIZE(buf);
        } else {
            return -1;
        }
        if (offset < 0 || size - offset < 16)
            return -1;
        p += offset;
        if (p[3] != 1)
            return -1;
        if (p[0] == 'l') {
            body_len = (unsigned int)p[7] << 24 | (unsigned int)p[6] << 16 | (unsigned int)p[5] << 8 | p[4];
            fields_len = (unsigned int)p[15] << 24 | (unsigned int)p[14] << 16 | (unsigned int)p[13] << 8 | p[12];
        } else if (p[0] == 'B') {
            body_len = (unsigned int)p[4] << 24 | (unsigned int)p[5] << 16 | (unsigned int)p[6] << 8 | p[7];
            fields_len = (unsigned int)p[12] << 24 | (unsigned int)p[13] << 16 | (unsigned int)p[14] << 8 | p[15];
        } else {
            return -1;
        }
        if (fields_len > max_fields)
            return -1;
        total = 16 + ((fields_len + 7) & ~7ULL) + body_len;
        if (max_size < 0 || total > (unsigned long long)max_size)
            return -1;
        return (Py_ssize_t)total;
    }
    /* bytes.find(b"\x05\x01u\x00", start, end) of REPLY_SERIAL's mark: the first place, or -1. */
    static CYTHON_INLINE Py_ssize_t busd_find_reply_mark(PyObject *data, Py_ssize_t start, Py_ssize_t end) {
        const char *p = PyBytes_AS_STRING(data);
        Py_ssize_t i;
        if (end > PyBytes_GET_SIZE(data))
            end = PyBytes_GET_SIZE(data);
        for (i = start; i + 4 <= end; i++)
            if (p[i] == 5 && p[i + 1] == 1 && p[i + 2] == 'u' && p[i + 3] == 0)
                return i;
        return -1;
    }
    /* Whether data[start:end] is all zero bytes. */
    static CYTHON_INLINE int busd_zeros(PyObject *data, Py_ssize_t start, Py_ssize_t end) {
        const char *p = PyBytes_AS_STRING(data);
        Py_ssize_t i;
        for (i = start; i < end; i++)
            if (p[i])
                return 0;
        return 1;
    }
    /* The forwarded header: data[:12], the new fields length, data[a0:a1] + data[b0:b1], zeros to 8,
       the SENDER field, zeros to 8, then data[body_from:] unless body_from < 0. NULL on no memory. */
    static CYTHON_INLINE PyObject *busd_stamped(PyObject *data, int endian, Py_ssize_t a0, Py_ssize_t a1,
                                  Py_ssize_t b0, Py_ssize_t b1, PyObject *field, Py_ssize_t body_from) {
        const char *src = PyBytes_AS_STRING(data);
        Py_ssize_t kept = (a1 - a0) + (b1 - b0);
        Py_ssize_t gap = -kept & 7;
        Py_ssize_t field_len = PyBytes_GET_SIZE(field);
        Py_ssize_t fields_len = kept + gap + field_len;
        Py_ssize_t tail = -fields_len & 7;
        Py_ssize_t body = body_from < 0 ? 0 : PyBytes_GET_SIZE(data) - body_from;
        PyObject *out = PyBytes_FromStringAndSize(NULL, 16 + fields_len + tail + body);
        unsigned char *o;
        unsigned int n = (unsigned int)fields_len;
        if (out == NULL)
            return NULL;
        o = (unsigned char *)PyBytes_AS_STRING(out);
        memcpy(o, src, 12);
        if (endian == 'B') {
            o[12] = n >> 24; o[13] = n >> 16; o[14] = n >> 8; o[15] = n;
        } else {
            o[12] = n; o[13] = n >> 8; o[14] = n >> 16; o[15] = n >> 24;
        }
        o += 16;
        memcpy(o, src + a0, a1 - a0);
        o += a1 - a0;
        memcpy(o, src + b0, b1 - b0);
        o += b1 - b0;
        memset(o, 0, gap);
        o += gap;
        memcpy(o, PyBytes_AS_STRING(field), field_len);
        o += field_len;
        memset(o, 0, tail);
        o += tail;
        if (body)
            memcpy(o, src + body_from, body);
        return out;
    }
    """
    unsigned int u32_at "busd_u32_at" (object data, Py_ssize_t pos, int endian)
    Py_ssize_t c_frame_size "busd_frame_size" (object buf, Py_ssize_t offset, Py_ssize_t max_size,
                                                 unsigned long long max_fields)
    Py_ssize_t find_reply_mark "busd_find_reply_mark" (object data, Py_ssize_t start, Py_ssize_t end)
    bint zeros "busd_zeros" (object data, Py_ssize_t start, Py_ssize_t end)
    object stamped "busd_stamped" (object data, int endian, Py_ssize_t a0, Py_ssize_t a1, Py_ssize_t b0,
                                   Py_ssize_t b1, object field, Py_ssize_t body_from)

cdef bint _PURE
# Module constants the hot functions compare with C integers: C constants here, so no comparison boxes one.
cdef Py_ssize_t _CACHEABLE_FIELDS_LENGTH, _COPY_BODY_UP_TO, _FIXED_SIZE, _MAX_FIELDS
cdef int _VERSION, _LITTLE, _BIG, _RETURN, _ERROR


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
               total=cython.ulonglong, serial=cython.uint, size=Py_ssize_t)
cpdef Py_ssize_t frame_size(object buf, Py_ssize_t offset=*, Py_ssize_t max_message_size=*) except -1

@cython.locals(h=Header)
cpdef Header _copy_fields(Header template)

@cython.locals(size=Py_ssize_t, endian=cython.int, mtype=cython.int, body_len=cython.ulonglong,
               serial=cython.ulonglong, fields_len=cython.ulonglong, fields_end=Py_ssize_t,
               body_start=Py_ssize_t, reply_at=Py_ssize_t, reply_serial=cython.ulonglong,
               h=Header, template=Header, data=bytes, cache=dict, replies_cache=dict)
cpdef Header parse_header(object buf, bint validate_body=*)

@cython.locals(fields_end=Py_ssize_t, start=Py_ssize_t, stop=Py_ssize_t, next_field=Py_ssize_t,
               gap=Py_ssize_t, new_fields_len=Py_ssize_t, tail_pad=Py_ssize_t, kept=bytes)
cpdef tuple stamp_sender(object buf, Header h, bytes field)

cpdef check_message_body(object buf, Header h)

cpdef forget_unique_name(str name)
