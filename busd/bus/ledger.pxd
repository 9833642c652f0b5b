# Types for the compiled twin of ledger.py (Cython, pure-Python mode: ledger.py is the source): one uid's
# lines are C integers, which the compiled router charges on every message it queues.
cdef class UserLedger:
    cdef public object uid
    cdef public Py_ssize_t out_bytes, out_bytes_peak, out_fds, out_fds_peak, in_bytes, in_bytes_peak
    cdef public Py_ssize_t in_fds, in_fds_peak, match_rules, match_rules_peak, names, names_peak
    cdef public Py_ssize_t replies, replies_peak, connections, connections_peak, incomplete, incomplete_peak
    cdef public Py_ssize_t links
