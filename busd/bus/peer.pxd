# Types for the compiled twin of peer.py (Cython, pure-Python mode: peer.py is the source). Peer is an
# extension type so the compiled router reads and counts its fields as C struct members.
from busd.bus.ledger cimport UserLedger


cdef class Peer:
    cdef public object conn, unique_name, credentials, policy, auth_uid
    cdef public set names
    cdef public dict sender_fields, calling, expecting
    cdef public tuple monitor_rules
    cdef public bint hello_done, monitor, refusing
    cdef public Py_ssize_t replies_outstanding, serial_in, match_count, peak_match_count, out_charged
    cdef public Py_ssize_t fds_charged, names_charged, peak_names, peak_replies, peak_fds, replies_answered
    cdef public double reply_seconds
    cdef public UserLedger user
    cdef object __weakref__
