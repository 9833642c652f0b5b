# Types for the compiled twin of ledger.py (Cython, pure-Python mode: ledger.py is the source): one uid's
# lines are C integers, which the compiled router charges on every message it queues.
cimport cython

cdef class UserLedger:
    cdef public object uid
    cdef public Py_ssize_t out_bytes, out_bytes_peak, out_fds, out_fds_peak, in_bytes, in_bytes_peak
    cdef public Py_ssize_t in_fds, in_fds_peak, match_rules, match_rules_peak, names, names_peak
    cdef public Py_ssize_t replies, replies_peak, connections, connections_peak, incomplete, incomplete_peak
    cdef public Py_ssize_t links


# The ledger itself: the router charges and settles through it on every read and flush and at every
# connection's start and end, so its methods are C calls from the compiled router (a plain class compiled
# as is made a connection's closing slower than the pure twin's). Peers stay `object`: peer.pxd cimports
# this file for UserLedger.
cdef class Ledger:
    cdef public dict users
    cdef public dict _input
    cdef public object _limits
    cdef public object quotas
    cdef public Py_ssize_t names_total

    cpdef UserLedger open_link(self, object uid)
    cpdef close_link(self, UserLedger user)
    cpdef UserLedger move_link(self, UserLedger user, object uid, bint incomplete)
    cpdef bint charge_incomplete(self, UserLedger user)
    cpdef charge_connection(self, UserLedger user, bint counted)

    @cython.locals(user=UserLedger)
    cpdef settle_names(self, object peer, Py_ssize_t count)

    @cython.locals(user=UserLedger, conn=object)
    cpdef room_for(self, object peer, Py_ssize_t size, Py_ssize_t nfds)

    @cython.locals(size=Py_ssize_t, nfds=Py_ssize_t)
    cpdef bint queue(self, object peer, object head, object body, object fds=*)

    @cython.locals(user=UserLedger)
    cpdef charge_queued(self, object peer, Py_ssize_t size, Py_ssize_t nfds=*)

    @cython.locals(user=UserLedger, queued=Py_ssize_t, delta=Py_ssize_t, fds=Py_ssize_t)
    cpdef settle_queue(self, object peer)

    @cython.locals(in_bytes=Py_ssize_t, in_fds=Py_ssize_t, charged=list)
    cpdef settle_input(self, object link, UserLedger user)

    @cython.locals(charged=list)
    cpdef release_input(self, object link, UserLedger user)

    cpdef peer_left(self, object peer, UserLedger user)

    @cython.locals(user=UserLedger)
    cpdef release_peer(self, object peer)
