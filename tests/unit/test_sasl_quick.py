"""The server machine's quick path for the common exchange answers exactly as its general path would.

ServerAuthenticator.receive_data() answers AUTH EXTERNAL (with the socket's uid),
NEGOTIATE_UNIX_FD and BEGIN itself and hands every other line to the general
machine. GeneralOnly below is that machine with the quick path bypassed: both are
fed the same reads, split anywhere, and must give the same replies, the same
errors and end in the same state.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from saslplay import FIRST_MESSAGE, GUID, OK, hexed, make_server

from busd.wire.sasl import ANONYMOUS, DBUS_COOKIE_SHA1, EXTERNAL, AuthError, Conversation
from busd.wire.sasl_server import ServerAuthenticator


class GeneralOnly(ServerAuthenticator):
    """The machine without its quick path: every byte goes through line framing and dispatch."""

    def receive_data(self, data: bytes) -> bytes:
        return Conversation.receive_data(self, data)


class NoKeyring:
    """DBUS_COOKIE_SHA1 offered with a keyring that is never reached (cookies are deferred)."""

    def best_cookie(self, context):
        raise AssertionError("deferred cookies: the machine must not read the keyring")

    def find(self, context, cookie_id):
        raise AssertionError("deferred cookies: the machine must not read the keyring")


LINES = [
    b"AUTH EXTERNAL " + hexed(1000) + b"\r\n",   # the quick one for uid 1000
    b"AUTH EXTERNAL " + hexed(0) + b"\r\n",      # the quick one for root
    b"AUTH EXTERNAL " + hexed(1000).upper() + b"\r\n",
    b"AUTH EXTERNAL " + hexed("01000") + b"\r\n",
    b"AUTH EXTERNAL " + hexed(1001) + b"\r\n",
    b"AUTH EXTERNAL\r\n", b"AUTH\r\n", b"AUTH ANONYMOUS\r\n", b"AUTH EXTERNAL  " + hexed(1000) + b"\r\n",
    b"AUTH DBUS_COOKIE_SHA1 " + hexed(1000) + b"\r\n",
    b"AUTH EXTERNAL " + hexed(1000) + b" \r\n",
    b"DATA\r\n", b"DATA " + hexed(1000) + b"\r\n", b"CANCEL\r\n", b"ERROR\r\n",
    b"NEGOTIATE_UNIX_FD\r\n", b"NEGOTIATE_UNIX_FD \r\n", b"BEGIN\r\n", b"BEGIN \r\n", b"begin\r\n",
    b"\r\n", b"\n", b"\r", b"\0", b"\xff\r\n", b"JUNK with words\r\n", FIRST_MESSAGE, b"x" * 40,
]

STATE = ("done", "waiting", "leftover", "uid", "mechanism", "unix_fd", "failures", "cookie_wanted", "_state",
         "_awaiting_nul")


# The lines that move a conversation along, for a second test that reaches deeper states more often.
STEPS = [LINES[0], LINES[5], b"DATA\r\n", LINES[12], b"NEGOTIATE_UNIX_FD\r\n", b"BEGIN\r\n", b"CANCEL\r\n",
         b"AUTH ANONYMOUS\r\n", b"ERROR\r\n", FIRST_MESSAGE]


def _outcome(machine: ServerAuthenticator, data: bytes) -> tuple:
    try:
        return ("replied", machine.receive_data(data))
    except AuthError as exc:
        return ("failed", str(exc), exc.reply)


@settings(max_examples=400, deadline=None)
@given(
    nul=st.sampled_from([b"\0", b"", b"\1"]),
    lines=st.lists(st.sampled_from(LINES), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    peer_uid=st.sampled_from([1000, 0, None]),
    mechanisms=st.sampled_from([(EXTERNAL,), (EXTERNAL, ANONYMOUS), (ANONYMOUS,), (EXTERNAL, DBUS_COOKIE_SHA1)]),
    unix_fd_possible=st.booleans(),
    max_line_length=st.sampled_from([16384, 64, 20]),
)
def test_quick_and_general_paths_agree(nul, lines, cuts, peer_uid, mechanisms, unix_fd_possible,
                                       max_line_length) -> None:
    stream = nul + b"".join(lines)
    bounds = sorted({0, len(stream), *(cut for cut in cuts if cut < len(stream))})
    reads = [stream[a:b] for a, b in zip(bounds, bounds[1:])] or [b""]
    _agree(reads, peer_uid, mechanisms, unix_fd_possible, max_line_length)


@settings(max_examples=400, deadline=None)
@given(
    steps=st.lists(st.lists(st.sampled_from(STEPS), min_size=1, max_size=3), max_size=6),
    peer_uid=st.sampled_from([1000, None]),
    unix_fd_possible=st.booleans(),
)
def test_quick_and_general_paths_agree_read_by_read(steps, peer_uid, unix_fd_possible) -> None:
    """A client that waits for each reply: whole lines per read, the common ones most often."""
    _agree([b"\0" + b"".join(steps[0])] + [b"".join(lines) for lines in steps[1:]] if steps else [b"\0"],
           peer_uid, (EXTERNAL, ANONYMOUS), unix_fd_possible, 16384)


def _agree(reads: list[bytes], peer_uid, mechanisms, unix_fd_possible, max_line_length) -> None:
    options = dict(peer_uid=peer_uid, mechanisms=mechanisms, unix_fd_possible=unix_fd_possible,
                   max_line_length=max_line_length, allow_anonymous=True, defer_cookies=True,
                   keyring=NoKeyring() if DBUS_COOKIE_SHA1 in mechanisms else None)
    quick, general = ServerAuthenticator(GUID, **options), GeneralOnly(GUID, **options)
    for data in reads:
        got, expected = _outcome(quick, data), _outcome(general, data)
        assert got == expected, f"read {data!r} of {reads!r}"
        assert [getattr(quick, name) for name in STATE] == [getattr(general, name) for name in STATE]
        if got[0] == "failed":
            break


def test_the_common_exchanges_take_the_quick_path() -> None:
    """The lines of libdbus, GLib, sd-bus and dbus-next clients never reach the general machine."""

    class Counting(ServerAuthenticator):
        general_reads = 0

        def _run_lines(self) -> bytes:
            Counting.general_reads += 1
            return super()._run_lines()

    auth = b"AUTH EXTERNAL " + hexed(1000) + b"\r\n"
    for reads in (
        [b"\0" + auth, b"NEGOTIATE_UNIX_FD\r\n", b"BEGIN\r\n" + FIRST_MESSAGE],   # libdbus, GLib
        [b"\0" + auth + b"NEGOTIATE_UNIX_FD\r\nBEGIN\r\n" + FIRST_MESSAGE],      # sd-bus, pipelined
        [b"\0", auth, b"BEGIN\r\n"],                                              # the NUL alone first
    ):
        server = Counting(GUID, peer_uid=1000)
        replies = b"".join(server.receive_data(data) for data in reads)
        assert replies in (OK + b"AGREE_UNIX_FD\r\n", OK)
        assert server.done and server.uid == 1000 and server.mechanism == EXTERNAL
        assert server.leftover in (FIRST_MESSAGE, b"")
    assert Counting.general_reads == 0
    # What the quick path does not know goes to the machine: a wrong uid is rejected there.
    server = make_server()
    assert server.receive_data(b"\0AUTH EXTERNAL " + hexed(1001) + b"\r\n").startswith(b"REJECTED")
