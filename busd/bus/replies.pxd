# Types for the compiled twin of replies.py (Cython, pure-Python mode: replies.py is the source): the
# tracker the router asks once per call and settles once per reply, at C level.
cimport cython
from busd.bus.ledger cimport UserLedger
from busd.bus.peer cimport Peer


cdef class ReplyTracker:
    cdef public dict pending
    cdef public object ledger

    @cython.locals(key=tuple, pending=dict, user=UserLedger)
    cpdef expect(self, Peer caller, object serial, Peer callee, object limits)

    @cython.locals(calls=list, key=tuple, caller=Peer)
    cpdef list callee_gone(self, Peer callee)

    @cython.locals(pending=dict, key=tuple, callee=Peer)
    cpdef caller_gone(self, Peer caller)


cpdef settled(Peer caller, tuple key)

@cython.locals(user=UserLedger)
cpdef unanswered(Peer caller, tuple key)
