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
    static inline PyObject *busd_uninitialised_bytes(Py_ssize_t size) {
        return PyBytes_FromStringAndSize(NULL, size);
    }
    static inline PyObject *busd_writable_view(PyObject *data) {
        return PyMemoryView_FromMemory(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), PyBUF_WRITE);
    }
    """
    object uninitialised_bytes "busd_uninitialised_bytes" (Py_ssize_t size)
    object writable_view "busd_writable_view" (object data)

# (The C helpers here are `static inline`: served.pxd cimports this file, so its module carries them unused.)
# One read and one write of the per-message path as single C calls (stream.py's _on_readable and flush), not
# through the socket module: its recv_into/sendmsg parse arguments, slice a view and build the iovec from a
# list each time, about a fifth of the daemon's CPU per sequential call beside the system calls themselves.
cdef extern from *:
    """
    #include <errno.h>
    #include <pthread.h>
    #include <string.h>
    #include <unistd.h>
    #include <stdlib.h>
    #include <sys/socket.h>
    #include <sys/uio.h>
    #define BUSD_READ_SIZE 262144
    #define BUSD_MAX_FDS 253
    #define BUSD_IOV_MAX 512
    /* One read buffer per thread, as the pure twin's _ReadBuffer: only what arrived is copied out. */
    static pthread_key_t busd_read_key;
    static pthread_once_t busd_read_once = PTHREAD_ONCE_INIT;
    static void busd_read_key_make(void) { (void)pthread_key_create(&busd_read_key, free); }
    static inline char *busd_read_buffer(void) {
        char *buffer;
        (void)pthread_once(&busd_read_once, busd_read_key_make);
        buffer = (char *)pthread_getspecific(busd_read_key);
        if (buffer == NULL) {
            buffer = (char *)malloc(BUSD_READ_SIZE);
            if (buffer != NULL && pthread_setspecific(busd_read_key, buffer) != 0) {
                free(buffer);
                buffer = NULL;
            }
        }
        return buffer;
    }
    /* What one read brought: bytes (b"" at the end of the stream), None when nothing is there yet, or
       False when the kernel cut the fds short (MSG_CTRUNC); with `fds` a list, received fds go on it.
       NULL with OSError set when the read fails. */
    static inline PyObject *busd_read(int fd, PyObject *fds) {
        char *buffer = busd_read_buffer();
        char control[CMSG_SPACE(BUSD_MAX_FDS * sizeof(int))];
        struct iovec iov;
        struct msghdr msg;
        struct cmsghdr *cmsg;
        Py_ssize_t size;
        int truncated = 0;
        if (buffer == NULL)
            return PyErr_NoMemory();
        iov.iov_base = buffer;
        iov.iov_len = BUSD_READ_SIZE;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        if (fds != Py_None) {
            msg.msg_control = control;
            msg.msg_controllen = sizeof control;
        }
        size = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
        if (size < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                Py_RETURN_NONE;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (fds != Py_None) {
            for (cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
                if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
                    size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                    int *received = (int *)CMSG_DATA(cmsg);
                    size_t i;
                    for (i = 0; i < count; i++) {
                        PyObject *number = PyLong_FromLong(received[i]);
                        if (number == NULL || PyList_Append(fds, number) < 0) {
                            Py_XDECREF(number);
                            for (; i < count; i++)  /* not kept on the list: closed here */
                                close(received[i]);
                            return NULL;
                        }
                        Py_DECREF(number);
                    }
                }
            }
            truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
        }
        if (truncated)
            Py_RETURN_FALSE;
        return PyBytes_FromStringAndSize(buffer, size);
    }
    /* One sendmsg() of the queue `out` from `start`: every entry up to the next (buffer, fds) tuple, at most
       BUSD_IOV_MAX. The bytes written, -2 when the socket is full (or the call interrupted), -1 with OSError
       set on failure. The entry at `start` carries no fds (the caller sends those itself). */
    static inline Py_ssize_t busd_send_queued(int fd, PyObject *out, Py_ssize_t start) {
        struct iovec iov[BUSD_IOV_MAX];
        Py_buffer views[BUSD_IOV_MAX];
        int viewed[BUSD_IOV_MAX];
        struct msghdr msg;
        Py_ssize_t end = PyList_GET_SIZE(out), count = 0, i, sent;
        if (end - start > BUSD_IOV_MAX)
            end = start + BUSD_IOV_MAX;
        for (i = start; i < end; i++) {
            PyObject *item = PyList_GET_ITEM(out, i);
            if (PyTuple_CheckExact(item))
                break;
            viewed[count] = 0;
            if (PyBytes_CheckExact(item)) {
                iov[count].iov_base = PyBytes_AS_STRING(item);
                iov[count].iov_len = PyBytes_GET_SIZE(item);
            } else {
                if (PyObject_GetBuffer(item, &views[count], PyBUF_SIMPLE) < 0) {
                    sent = -1;
                    goto done;
                }
                viewed[count] = 1;
                iov[count].iov_base = views[count].buf;
                iov[count].iov_len = views[count].len;
            }
            count++;
        }
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = iov;
        msg.msg_iovlen = count;
        sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                sent = -2;
            else {
                PyErr_SetFromErrno(PyExc_OSError);
                sent = -1;
            }
        }
    done:
        for (i = 0; i < count; i++)
            if (viewed[i])
                PyBuffer_Release(&views[i]);
        return sent;
    }
    /* stream.py's peer_credentials(): (pid, uid, gid, groups) of a unix socket's peer, in two getsockopt()
       calls and no Python objects between them; groups None when there are more than 256 of them. */
    static inline PyObject *busd_peer_credentials(int fd) {
        struct ucred cred;
        gid_t groups[256];
        socklen_t size = sizeof cred;
        PyObject *list;
        Py_ssize_t i, count;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        size = sizeof groups;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &size) < 0) {
            if (errno == ERANGE)
                return Py_BuildValue("(iiiO)", (int)cred.pid, (int)cred.uid, (int)cred.gid, Py_None);
            size = 0;  /* the kernel will not say: the primary group alone, as the pure twin */
        }
        count = size / sizeof(gid_t);
        list = PyList_New(count);
        if (list == NULL)
            return NULL;
        for (i = 0; i < count; i++) {
            PyObject *number = PyLong_FromUnsignedLong(groups[i]);
            if (number == NULL) {
                Py_DECREF(list);
                return NULL;
            }
            PyList_SET_ITEM(list, i, number);
        }
        return Py_BuildValue("(iiiN)", (int)cred.pid, (int)cred.uid, (int)cred.gid, list);
    }
    """
    object read_once "busd_read" (int fd, object fds)
    object read_peer_credentials "busd_peer_credentials" (int fd)
    Py_ssize_t send_queued "busd_send_queued" (int fd, list out, Py_ssize_t start) except -1


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

    # What a side adds, called at C level from the read and write loops (a Python subclass may override them).
    cpdef data_received(self, object data)
    cpdef message_received(self, object message, object h, object fds)
    cpdef flushed(self)

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
