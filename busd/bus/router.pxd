# Types for the compiled twin of router.py (Cython, pure-Python mode: router.py is the source). Bus is an
# extension type whose per-message attributes are C fields; the rest live in its __dict__.
cimport cython
from busd.bus.ledger cimport Ledger, UserLedger
from busd.bus.peer cimport Peer
from busd.bus.replies cimport ReplyTracker, settled
from busd.wire.message cimport Header, forget_unique_name


cdef class Bus:
    cdef dict __dict__
    cdef public Ledger ledger
    cdef public object loop, registry, matches, backpressure, policy, outbox, driver
    cdef public ReplyTracker replies
    cdef public dict peers, links, _link_users
    cdef public list monitors, _flush_queue, observers
    cdef public bint _reading
    cdef public object _limits, _user_out_bytes, _user_out_fds, soft_queue_limit

    cdef public set _incomplete
    cdef public Py_ssize_t _next_unique

    # A connection's life: called from the transport (Python) but typed inside, so peers, users and the
    # ledger are read at C level.
    @cython.locals(user=UserLedger)
    cpdef link_opened(self, object link)

    @cython.locals(peer=Peer, uid=object)
    cpdef peer_authenticated(self, object link, object auth_uid)

    cpdef admit(self, Peer peer)

    @cython.locals(name=str)
    cpdef str assign_unique_name(self, Peer peer)

    @cython.locals(peer=Peer, user=UserLedger, caller=Peer)
    cpdef link_closed(self, object link)

    cpdef _incomplete_ended(self, object link)

    cpdef input_started(self)
    cpdef input_done(self)
    cpdef schedule_flush(self, object link)
    cpdef _flush_all(self)
    cpdef output_flushed(self, object link)

    @cython.locals(target=Peer, mtype=int, requested_reply=bint, key=tuple)
    cpdef receive(self, Peer peer, object buf, Header h, object fds, bint monitored=*)

    @cython.locals(size=Py_ssize_t, field=bytes, user=UserLedger)
    cpdef deliver(self, Peer target, Peer sender, object buf, Header h, object fds)
