"""The server SASL machine: full conversations for each mechanism, every error path."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import stat
import time

import pytest
from saslplay import (
    FIRST_MESSAGE, ME, OK, cookie_server, hexed, keyring_lines, make_server, play, secret_of, start_cookie,
)

from busd.transport.keyring import KeyringDirectory
from busd.wire.errors import ProtocolError
from busd.wire.sasl import ANONYMOUS, DBUS_COOKIE_SHA1, EXTERNAL, AuthError, cookie_hash
from busd.wire.sasl_server import CookieWanted, ServerAuthenticator, cookie_for_identity


# --- EXTERNAL -----------------------------------------------------------------------------------


def test_external_with_initial_response() -> None:
    server = make_server()
    play(server, [(b"\0AUTH EXTERNAL " + hexed(1000) + b"\r\n", OK), (b"BEGIN\r\n", b"")])
    assert server.done and server.uid == 1000 and server.mechanism == EXTERNAL
    assert not server.unix_fd and server.leftover == b""


def test_external_without_initial_response_gets_an_empty_challenge() -> None:
    server = make_server()
    play(server, [(b"\0AUTH EXTERNAL\r\n", b"DATA\r\n"), (b"DATA\r\n", OK), (b"BEGIN\r\n", b"")])
    assert server.uid == 1000


def test_external_identity_sent_as_data_after_the_challenge() -> None:
    server = make_server()
    play(server, [(b"\0AUTH EXTERNAL\r\n", b"DATA\r\n"), (b"DATA " + hexed(1000) + b"\r\n", OK)])


def test_external_wrong_uid_is_rejected() -> None:
    server = make_server()
    play(server, [(b"\0AUTH EXTERNAL " + hexed(0) + b"\r\n", b"REJECTED EXTERNAL\r\n")])
    assert server.uid is None and not server.done
    play(server, [(b"AUTH EXTERNAL " + hexed(1000) + b"\r\n", OK)])


@pytest.mark.parametrize("identity", [b"abc", b"1000 ", b" 1000", b"-1000", b"+1000", b"99999999999"])
def test_external_bad_identity_is_rejected(identity: bytes) -> None:
    server = make_server()
    play(server, [(b"\0AUTH EXTERNAL " + identity.hex().encode() + b"\r\n", b"REJECTED EXTERNAL\r\n")])


def test_external_without_peer_credentials_is_rejected() -> None:
    server = make_server(peer_uid=None)
    play(server, [(b"\0AUTH EXTERNAL " + hexed(1000) + b"\r\n", b"REJECTED EXTERNAL\r\n")])


def test_sd_bus_style_pipelined_handshake_with_first_message() -> None:
    server = make_server()
    out = server.receive_data(b"\0AUTH EXTERNAL\r\nDATA\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n" + FIRST_MESSAGE)
    assert out == b"DATA\r\n" + OK + b"AGREE_UNIX_FD\r\n"
    assert server.done and server.unix_fd and server.leftover == FIRST_MESSAGE


def test_begin_in_the_same_read_as_the_first_message() -> None:
    server = make_server()
    play(server, [(b"\0AUTH EXTERNAL " + hexed(1000) + b"\r\n", OK), (b"BEGIN\r\n" + FIRST_MESSAGE, b"")])
    assert server.leftover == FIRST_MESSAGE
    server.receive_data(b"more")  # bytes fed after BEGIN are kept too
    assert server.leftover == FIRST_MESSAGE + b"more"


def test_byte_by_byte_gives_the_same_replies_as_one_chunk() -> None:
    script = (b"\0AUTH\r\nAUTH EXTERNAL\r\nDATA " + hexed(1000) + b"\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n"
              + FIRST_MESSAGE)
    whole = make_server()
    whole_reply = whole.receive_data(script)
    piecewise = make_server()
    replies = b"".join(piecewise.receive_data(script[i:i + 1]) for i in range(len(script)))
    assert whole_reply == b"REJECTED EXTERNAL\r\nDATA\r\n" + OK + b"AGREE_UNIX_FD\r\n"
    assert replies == whole_reply
    assert piecewise.leftover == whole.leftover == FIRST_MESSAGE
    assert piecewise.uid == whole.uid == 1000


def test_empty_reads_are_harmless() -> None:
    server = make_server()
    play(server, [(b"", b""), (b"\0", b""), (b"", b""), (b"AUTH EXTERNAL " + hexed(1000) + b"\r\n", OK)])


def test_tabs_and_repeated_blanks_separate_words() -> None:
    server = make_server()
    play(server, [(b"\0AUTH \t EXTERNAL\t" + hexed(1000) + b"\r\n", OK)])


# --- mechanism lists, REJECTED, failures ---------------------------------------------------------


@pytest.mark.parametrize("options, offered", [
    ({}, b"EXTERNAL"),
    ({"mechanisms": (ANONYMOUS, DBUS_COOKIE_SHA1, EXTERNAL)}, b"EXTERNAL DBUS_COOKIE_SHA1"),
    ({"mechanisms": (ANONYMOUS, DBUS_COOKIE_SHA1, EXTERNAL), "allow_anonymous": True},
     b"EXTERNAL DBUS_COOKIE_SHA1 ANONYMOUS"),
    ({"mechanisms": (DBUS_COOKIE_SHA1,)}, b"DBUS_COOKIE_SHA1"),
    ({"mechanisms": (ANONYMOUS,)}, b""),
])
def test_bare_auth_lists_the_offered_mechanisms(tmp_path, options: dict, offered: bytes) -> None:
    server = make_server(keyring=KeyringDirectory(str(tmp_path)), **options)
    expected = b"REJECTED" + (b" " + offered if offered else b"") + b"\r\n"
    play(server, [(b"\0AUTH\r\n", expected)])


@pytest.mark.parametrize("mechanism", [b"KERBEROS_V4", b"external", b"ANONYMOUS", b"DBUS_COOKIE_SHA1"])
def test_mechanisms_not_offered_are_rejected(mechanism: bytes) -> None:
    server = make_server()
    play(server, [(b"\0AUTH " + mechanism + b" 31\r\n", b"REJECTED EXTERNAL\r\n")])


def test_too_many_failures_disconnect() -> None:
    server = make_server()
    for attempt in range(5):
        play(server, [((b"\0" if attempt == 0 else b"") + b"AUTH EXTERNAL " + hexed(7) + b"\r\n",
                       b"REJECTED EXTERNAL\r\n")])
    with pytest.raises(AuthError, match="failed to authenticate 6 times") as caught:
        server.receive_data(b"AUTH\r\n")
    assert isinstance(caught.value, ProtocolError) and "6 times" in caught.value.reason


def test_failure_limit_is_configurable() -> None:
    server = make_server(max_failures=1)
    with pytest.raises(AuthError):
        server.receive_data(b"\0AUTH\r\n")


# --- commands in each state -----------------------------------------------------------------------


@pytest.mark.parametrize("line, reply", [
    (b"CANCEL", b'ERROR "Not currently in an auth conversation"'),
    (b"DATA 31", b'ERROR "Not currently in an auth conversation"'),
    (b"ERROR", b"REJECTED EXTERNAL"),
    (b"ERROR \"some text\"", b"REJECTED EXTERNAL"),
    (b"NEGOTIATE_UNIX_FD", b'ERROR "Need to authenticate first"'),
    (b"OK", b'ERROR "Unknown command"'),
    (b"REJECTED", b'ERROR "Unknown command"'),
    (b"AGREE_UNIX_FD", b'ERROR "Unknown command"'),
    (b"HELLO", b'ERROR "Unknown command"'),
    (b"auth EXTERNAL", b'ERROR "Unknown command"'),
    (b"", b'ERROR "Unknown command"'),
    (b"AUTH EXTERNAL 3", b'ERROR "Invalid hex encoding"'),
    (b"AUTH EXTERNAL zz", b'ERROR "Invalid hex encoding"'),
])
def test_commands_while_waiting_for_auth(line: bytes, reply: bytes) -> None:
    server = make_server()
    play(server, [(b"\0" + line + b"\r\n", reply + b"\r\n")])
    play(server, [(b"AUTH EXTERNAL " + hexed(1000) + b"\r\n", OK)])  # the conversation goes on


@pytest.mark.parametrize("line, reply", [
    (b"AUTH EXTERNAL", b'ERROR "Sent AUTH while another AUTH in progress"'),
    (b"NEGOTIATE_UNIX_FD", b'ERROR "Need to authenticate first"'),
    (b"DATA 3", b'ERROR "Invalid hex encoding"'),
    (b"OK", b'ERROR "Unknown command"'),
])
def test_commands_while_waiting_for_data(line: bytes, reply: bytes) -> None:
    server = make_server()
    play(server, [(b"\0AUTH EXTERNAL\r\n", b"DATA\r\n"), (line + b"\r\n", reply + b"\r\n"), (b"DATA\r\n", OK)])


@pytest.mark.parametrize("line", [b"CANCEL", b"ERROR"])
def test_cancel_or_error_while_waiting_for_data_rejects(line: bytes) -> None:
    server = make_server()
    play(server, [(b"\0AUTH EXTERNAL\r\n", b"DATA\r\n"), (line + b"\r\n", b"REJECTED EXTERNAL\r\n")])
    # The mechanism is over: a new AUTH EXTERNAL asks for an identity again.
    play(server, [(b"AUTH EXTERNAL\r\n", b"DATA\r\n")])


@pytest.mark.parametrize("line, reply", [
    (b"AUTH EXTERNAL", b'ERROR "Sent AUTH while expecting BEGIN"'),
    (b"DATA", b'ERROR "Sent DATA while expecting BEGIN"'),
    (b"OK", b'ERROR "Unknown command"'),
])
def test_commands_while_waiting_for_begin(line: bytes, reply: bytes) -> None:
    server = make_server()
    play(server, [(b"\0AUTH EXTERNAL " + hexed(1000) + b"\r\n", OK), (line + b"\r\n", reply + b"\r\n"),
                  (b"BEGIN\r\n", b"")])
    assert server.done and server.uid == 1000


@pytest.mark.parametrize("line", [b"CANCEL", b"ERROR"])
def test_cancel_after_ok_forgets_the_authentication(line: bytes) -> None:
    server = make_server()
    play(server, [(b"\0AUTH EXTERNAL " + hexed(1000) + b"\r\nNEGOTIATE_UNIX_FD\r\n", OK + b"AGREE_UNIX_FD\r\n"),
                  (line + b"\r\n", b"REJECTED EXTERNAL\r\n")])
    assert server.uid is None and server.mechanism is None and not server.unix_fd
    with pytest.raises(AuthError, match="BEGIN before"):
        server.receive_data(b"BEGIN\r\n")


@pytest.mark.parametrize("prefix", [b"", b"AUTH EXTERNAL\r\n"])
def test_begin_before_ok_is_fatal(prefix: bytes) -> None:
    server = make_server()
    with pytest.raises(AuthError, match="BEGIN before it was authenticated"):
        server.receive_data(b"\0" + prefix + b"BEGIN\r\n")


def test_negotiate_unix_fd_agreed_when_possible() -> None:
    server = make_server(unix_fd_possible=True)
    play(server, [(b"\0AUTH EXTERNAL " + hexed(1000) + b"\r\n", OK),
                  (b"NEGOTIATE_UNIX_FD\r\n", b"AGREE_UNIX_FD\r\n"), (b"BEGIN\r\n", b"")])
    assert server.unix_fd


def test_negotiate_unix_fd_refused_when_not_possible() -> None:
    server = make_server(unix_fd_possible=False)
    play(server, [(b"\0AUTH EXTERNAL " + hexed(1000) + b"\r\n", OK),
                  (b"NEGOTIATE_UNIX_FD\r\n",
                   b'ERROR "Unix FD passing not supported, not authenticated or otherwise not possible"\r\n'),
                  (b"BEGIN\r\n", b"")])
    assert server.done and not server.unix_fd


# --- fatal input ------------------------------------------------------------------------------------


def test_missing_initial_nul_byte_is_fatal() -> None:
    with pytest.raises(AuthError, match="NUL byte"):
        make_server().receive_data(b"AUTH EXTERNAL 31\r\n")


@pytest.mark.parametrize("line", [b"AUTH EXTERNAL \xff\xfe", b"AUTH \x00EXTERNAL", "AUTH ÉXTERNAL".encode()])
def test_non_ascii_or_nul_in_a_line_is_fatal(line: bytes) -> None:
    with pytest.raises(AuthError, match="non-ASCII"):
        make_server().receive_data(b"\0" + line + b"\r\n")


def test_line_too_long_is_fatal_even_before_its_end_arrives() -> None:
    server = make_server(max_line_length=100)
    server.receive_data(b"\0" + b"A" * 101)  # 100 bytes and maybe a '\r' are still acceptable
    with pytest.raises(AuthError, match="longer than 100 bytes"):
        server.receive_data(b"A")


def test_terminated_line_too_long_is_fatal() -> None:
    with pytest.raises(AuthError, match="longer than 100 bytes"):
        make_server(max_line_length=100).receive_data(b"\0" + b"A" * 101 + b"\r\n")


def test_line_of_exactly_the_maximum_length_is_fine() -> None:
    server = make_server(max_line_length=100)
    play(server, [(b"\0" + b"A" * 100 + b"\r\n", b'ERROR "Unknown command"\r\n')])


def test_default_line_limit_is_16_kib() -> None:
    with pytest.raises(AuthError):
        make_server().receive_data(b"\0AUTH EXTERNAL " + b"3" * 16384 + b"\r\n")


# --- ANONYMOUS ----------------------------------------------------------------------------------------


def test_anonymous_when_listed_and_allowed() -> None:
    server = make_server(mechanisms=(EXTERNAL, ANONYMOUS), allow_anonymous=True, peer_uid=None)
    play(server, [(b"\0AUTH ANONYMOUS " + "trace ✓".encode().hex().encode() + b"\r\n", OK), (b"BEGIN\r\n", b"")])
    assert server.done and server.uid is None and server.mechanism == ANONYMOUS


def test_anonymous_without_trace() -> None:
    server = make_server(mechanisms=(ANONYMOUS,), allow_anonymous=True)
    play(server, [(b"\0AUTH ANONYMOUS\r\n", OK)])


def test_anonymous_listed_but_not_allowed_is_rejected() -> None:
    server = make_server(mechanisms=(EXTERNAL, ANONYMOUS), allow_anonymous=False)
    play(server, [(b"\0AUTH ANONYMOUS\r\n", b"REJECTED EXTERNAL\r\n")])


def test_anonymous_allowed_but_not_listed_is_rejected() -> None:
    server = make_server(mechanisms=(EXTERNAL,), allow_anonymous=True)
    play(server, [(b"\0AUTH ANONYMOUS\r\n", b"REJECTED EXTERNAL\r\n")])


def test_anonymous_trace_must_be_utf8() -> None:
    server = make_server(mechanisms=(ANONYMOUS,), allow_anonymous=True)
    play(server, [(b"\0AUTH ANONYMOUS " + b"\xff\xfe".hex().encode() + b"\r\n", b"REJECTED ANONYMOUS\r\n")])


# --- DBUS_COOKIE_SHA1, server side -------------------------------------------------------------------------


def test_cookie_sha1_full_conversation(tmp_path) -> None:
    keyrings = tmp_path / "keyrings"
    server = cookie_server(keyrings)
    context, cookie_id, challenge = start_cookie(server)
    assert context == "org_freedesktop_general" and re.fullmatch(r"[0-9a-f]{32}", challenge)
    secret = secret_of(keyrings, cookie_id)
    client_challenge = "c0ffee" * 4
    proof = hashlib.sha1(f"{challenge}:{client_challenge}:{secret}".encode()).hexdigest()
    play(server, [(b"DATA " + f"{client_challenge} {proof}".encode().hex().encode() + b"\r\n", OK),
                  (b"BEGIN\r\n", b"")])
    assert server.uid == ME and server.mechanism == DBUS_COOKIE_SHA1
    # The server created a private keyring: directory 0700, file 0600, lines "<id> <time> <hex>".
    assert stat.S_IMODE(os.stat(keyrings).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(keyrings / "org_freedesktop_general").st_mode) == 0o600
    (line,) = keyring_lines(keyrings)
    number, created, secret_hex = line.split(" ")
    assert int(number) == cookie_id and abs(int(created) - time.time()) < 3600
    assert re.fullmatch(r"[0-9a-f]{48}", secret_hex)
    assert not (keyrings / "org_freedesktop_general.lock").exists()


def test_cookie_sha1_accepts_a_login_name(tmp_path) -> None:
    server = cookie_server(tmp_path / "k")
    start_cookie(server, pwd.getpwuid(ME).pw_name)


def test_cookie_sha1_custom_context(tmp_path) -> None:
    server = cookie_server(tmp_path / "k", cookie_context="my_context")
    context, cookie_id, _ = start_cookie(server)
    assert context == "my_context" and (tmp_path / "k" / "my_context").exists()


@pytest.mark.parametrize("identity", [ME + 1, "no-such-user-here", ""])
def test_cookie_sha1_only_for_the_server_user(tmp_path, identity) -> None:
    server = cookie_server(tmp_path / "k")
    play(server, [(b"\0AUTH DBUS_COOKIE_SHA1 " + hexed(identity) + b"\r\n", b"REJECTED DBUS_COOKIE_SHA1\r\n")])


@pytest.mark.parametrize("answer", [
    lambda challenge, secret: f"abc {'0' * 40}",                       # wrong hash
    lambda challenge, secret: f"abc {cookie_hash(challenge, 'abd', secret)}",  # hash of another challenge
    lambda challenge, secret: f"abc{cookie_hash(challenge, 'abc', secret)}",   # no separator
    lambda challenge, secret: f" {cookie_hash(challenge, '', secret)}",        # empty client challenge
])
def test_cookie_sha1_bad_proof_is_rejected(tmp_path, answer) -> None:
    server = cookie_server(tmp_path / "k")
    _, cookie_id, challenge = start_cookie(server)
    text = answer(challenge, secret_of(tmp_path / "k", cookie_id))
    play(server, [(b"DATA " + text.encode().hex().encode() + b"\r\n", b"REJECTED DBUS_COOKIE_SHA1\r\n")])


def test_cookie_sha1_rejects_a_keyring_open_to_others(tmp_path) -> None:
    keyrings = tmp_path / "k"
    keyrings.mkdir(mode=0o700)
    os.chmod(keyrings, 0o755)
    server = cookie_server(keyrings)
    play(server, [(b"\0AUTH DBUS_COOKIE_SHA1 " + hexed(ME) + b"\r\n", b"REJECTED DBUS_COOKIE_SHA1\r\n")])
    assert not (keyrings / "org_freedesktop_general").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a directory's owner needs root")
def test_cookie_sha1_rejects_a_keyring_owned_by_someone_else(tmp_path) -> None:
    keyrings = tmp_path / "k"
    keyrings.mkdir(mode=0o700)
    os.chown(keyrings, 12345, 12345)
    server = cookie_server(keyrings)
    play(server, [(b"\0AUTH DBUS_COOKIE_SHA1 " + hexed(ME) + b"\r\n", b"REJECTED DBUS_COOKIE_SHA1\r\n")])


def test_cookie_sha1_reuses_a_recent_cookie(tmp_path) -> None:
    keyrings = tmp_path / "k"
    keyrings.mkdir(mode=0o700)
    existing = f"77 {int(time.time()) - 10} {'ab' * 24}\n"
    (keyrings / "org_freedesktop_general").write_text(existing)
    _, cookie_id, _ = start_cookie(cookie_server(keyrings))
    assert cookie_id == 77
    assert (keyrings / "org_freedesktop_general").read_text() == existing


def test_rejection_then_another_mechanism(tmp_path) -> None:
    server = make_server(mechanisms=(EXTERNAL, DBUS_COOKIE_SHA1), keyring=KeyringDirectory(str(tmp_path / "k")))
    _, cookie_id, challenge = start_cookie(server)
    play(server, [(b"CANCEL\r\n", b"REJECTED EXTERNAL DBUS_COOKIE_SHA1\r\n"),
                  (b"AUTH EXTERNAL " + hexed(1000) + b"\r\n", OK)])
    assert server.mechanism == EXTERNAL


# --- constructor checks -----------------------------------------------------------------------------------


def test_server_rejects_unknown_mechanisms_and_bad_guids() -> None:
    with pytest.raises(ValueError, match="KERBEROS_V4"):
        make_server(mechanisms=(EXTERNAL, "KERBEROS_V4"))
    with pytest.raises(ValueError, match="32 hex digits"):
        ServerAuthenticator("not-a-guid")


def test_server_refuses_cookie_sha1_without_a_keyring() -> None:
    with pytest.raises(ValueError, match="needs a keyring"):
        make_server(mechanisms=(EXTERNAL, DBUS_COOKIE_SHA1))
    make_server(mechanisms=(EXTERNAL, ANONYMOUS))  # the other mechanisms need none


# --- DBUS_COOKIE_SHA1 with the lookup deferred to the caller (the daemon runs it in a thread) ---------------


def test_deferred_cookie_waits_for_the_caller_and_keeps_later_lines(tmp_path) -> None:
    keyrings = tmp_path / "keyrings"
    server = cookie_server(keyrings, defer_cookies=True)
    # The identity line, then a line that must wait until the cookie is known.
    assert server.receive_data(b"\0AUTH DBUS_COOKIE_SHA1 " + hexed(ME) + b"\r\nCANCEL\r\n") == b""
    assert server.waiting and server.cookie_wanted == CookieWanted(str(ME).encode(), "org_freedesktop_general")
    assert not keyrings.exists(), "the machine touched no keyring itself"
    cookie = cookie_for_identity(server.keyring, server.cookie_wanted)
    reply = server.cookie_found(cookie)
    data, rejected = reply.split(b"\r\n")[:2]
    context, cookie_id, _challenge = bytes.fromhex(data[5:].decode()).decode().split(" ")
    assert context == "org_freedesktop_general" and int(cookie_id) == cookie.id
    assert rejected == b"REJECTED DBUS_COOKIE_SHA1"  # CANCEL, handled once the challenge went out
    assert not server.waiting and server.cookie_wanted is None


def test_deferred_cookie_then_a_full_handshake(tmp_path) -> None:
    keyrings = tmp_path / "keyrings"
    server = cookie_server(keyrings, defer_cookies=True)
    assert server.receive_data(b"\0AUTH DBUS_COOKIE_SHA1 " + hexed(ME) + b"\r\n") == b""
    reply = server.cookie_found(cookie_for_identity(server.keyring, server.cookie_wanted))
    _context, cookie_id, challenge = bytes.fromhex(reply[5:-2].decode()).decode().split(" ")
    proof = cookie_hash(challenge, "abc", secret_of(keyrings, int(cookie_id)))
    play(server, [(b"DATA " + f"abc {proof}".encode().hex().encode() + b"\r\n", OK), (b"BEGIN\r\n", b"")])
    assert server.done and server.uid == ME


@pytest.mark.parametrize("identity", [ME + 1, "no-such-user-here", "ro\0ot"])
def test_deferred_cookie_for_another_identity_is_rejected(tmp_path, identity) -> None:
    server = cookie_server(tmp_path / "k", defer_cookies=True)
    server.receive_data(b"\0AUTH DBUS_COOKIE_SHA1 " + str(identity).encode().hex().encode() + b"\r\n")
    assert cookie_for_identity(server.keyring, server.cookie_wanted) is None
    assert server.cookie_found(None) == b"REJECTED DBUS_COOKIE_SHA1\r\n"


def test_cookie_found_without_a_waiting_exchange_is_an_error(tmp_path) -> None:
    server = cookie_server(tmp_path / "k", defer_cookies=True)
    with pytest.raises(ValueError):
        server.cookie_found(None)
