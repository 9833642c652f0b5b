"""The SASL state machines: full conversations for each mechanism, every error path, the keyring."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import stat
import time

import pytest

from busd.wire.errors import ProtocolError
from busd.wire.sasl import (
    ANONYMOUS, DBUS_COOKIE_SHA1, EXTERNAL, AuthError, ClientAuthenticator, CookieKeyring,
    KeyringError, ServerAuthenticator, cookie_hash, validate_cookie_context,
)

GUID = "0123456789abcdef0123456789abcdef"
OK = f"OK {GUID}\r\n".encode()
ME = os.geteuid()
# The first bytes of a Hello call, standing in for "the first D-Bus message after BEGIN".
FIRST_MESSAGE = b"l\x01\x00\x01\x00\x00\x00\x00\x01\x00\x00\x00m\x00\x00\x00\x01\x01o\x00\x15\x00\x00\x00"


def hexed(text: str | int) -> bytes:
    return str(text).encode().hex().encode()


def make_server(**options) -> ServerAuthenticator:
    options.setdefault("peer_uid", 1000)
    return ServerAuthenticator(GUID, **options)


def play(auth: ServerAuthenticator | ClientAuthenticator, script: list[tuple[bytes, bytes]]) -> None:
    """Feed each chunk and check the reply to it."""
    for sent, expected in script:
        assert auth.receive_data(sent) == expected, f"after {sent!r}"


def handshake(client: ClientAuthenticator, server: ServerAuthenticator) -> None:
    """Shuttle bytes between the two machines until the server has seen BEGIN."""
    to_server = client.initial_bytes()
    for _ in range(20):
        to_client = server.receive_data(to_server)
        if server.done:
            assert client.done
            return
        to_server = client.receive_data(to_client)
    raise AssertionError("the handshake did not finish in 20 round trips")


def keyring_lines(directory) -> list[str]:
    return (directory / "org_freedesktop_general").read_text().splitlines()


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
def test_bare_auth_lists_the_offered_mechanisms(options: dict, offered: bytes) -> None:
    server = make_server(**options)
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


def cookie_server(keyring_dir, **options) -> ServerAuthenticator:
    return make_server(mechanisms=(DBUS_COOKIE_SHA1,), keyring_dir=str(keyring_dir), **options)


def start_cookie(server: ServerAuthenticator, identity: str | int = ME) -> tuple[str, int, str]:
    """Send AUTH DBUS_COOKIE_SHA1 and decode the server's 'context id challenge'."""
    reply = server.receive_data(b"\0AUTH DBUS_COOKIE_SHA1 " + hexed(identity) + b"\r\n")
    match = re.fullmatch(rb"DATA ([0-9a-f]+)\r\n", reply)
    assert match, reply
    context, cookie_id, challenge = bytes.fromhex(match.group(1).decode()).decode().split(" ")
    return context, int(cookie_id), challenge


def secret_of(keyring_dir, cookie_id: int) -> str:
    for line in keyring_lines(keyring_dir):
        number, _, secret = line.split(" ")
        if int(number) == cookie_id:
            return secret
    raise AssertionError(f"cookie {cookie_id} is not in the keyring")


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
    server = make_server(mechanisms=(EXTERNAL, DBUS_COOKIE_SHA1), keyring_dir=str(tmp_path / "k"))
    _, cookie_id, challenge = start_cookie(server)
    play(server, [(b"CANCEL\r\n", b"REJECTED EXTERNAL DBUS_COOKIE_SHA1\r\n"),
                  (b"AUTH EXTERNAL " + hexed(1000) + b"\r\n", OK)])
    assert server.mechanism == EXTERNAL


# --- the keyring -------------------------------------------------------------------------------------------


def test_keyring_rewrite_drops_expired_future_and_malformed_cookies(tmp_path) -> None:
    now = 1_700_000_000
    keyring = CookieKeyring(str(tmp_path), "ctx", clock=lambda: now)
    os.chmod(tmp_path, 0o700)
    (tmp_path / "ctx").write_text("\n".join([
        f"1 {now - 400} {'01' * 24}",    # too old for new challenges, still valid for answers: kept
        f"2 {now - 1000} {'02' * 24}",   # expired: dropped
        f"3 {now + 1000} {'03' * 24}",   # from the future: dropped
        f"4 {now} nothex",               # malformed: dropped
        "garbage",
        f"{2**31} {now} {'05' * 24}",    # id out of range: dropped
        f"6 -5 {'06' * 24}",             # negative time: dropped
    ]) + "\n")
    assert [cookie.id for cookie in keyring.cookies()] == [1]
    assert keyring.find(1) is not None and keyring.find(2) is None
    new = keyring.best_cookie()
    assert new.id != 1 and new.created == now
    assert [line.split()[0] for line in (tmp_path / "ctx").read_text().splitlines()] == ["1", str(new.id)]
    assert keyring.best_cookie() == new  # now recent: no further cookie


def test_keyring_ignores_a_file_with_non_ascii_content(tmp_path) -> None:
    os.chmod(tmp_path, 0o700)
    (tmp_path / "ctx").write_bytes(f"1 {int(time.time())} {'01' * 24}\n\xff\n".encode("latin-1"))
    keyring = CookieKeyring(str(tmp_path), "ctx")
    assert keyring.cookies() == []
    assert keyring.best_cookie().id != 1


def test_keyring_takes_over_a_stale_lock(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(CookieKeyring, "LOCK_ATTEMPTS", 2)
    monkeypatch.setattr(CookieKeyring, "LOCK_RETRY_SECONDS", 0.0)
    os.chmod(tmp_path, 0o700)
    (tmp_path / "ctx.lock").write_text("")
    cookie = CookieKeyring(str(tmp_path), "ctx").best_cookie()
    assert CookieKeyring(str(tmp_path), "ctx").find(cookie.id) == cookie
    assert not (tmp_path / "ctx.lock").exists()


@pytest.mark.parametrize("prepare, message", [
    (lambda path: None, "cannot use keyring directory"),
    (lambda path: path.write_text("x"), "is not a directory"),
    (lambda path: (path.mkdir(), os.chmod(path, 0o750)), "run chmod 700"),
])
def test_keyring_errors_say_what_to_fix(tmp_path, prepare, message: str) -> None:
    path = tmp_path / "k"
    prepare(path)
    with pytest.raises(KeyringError, match=message):
        CookieKeyring(str(path), "ctx").cookies()


@pytest.mark.parametrize("context", ["", ".hidden", "a.lock", "a/b", "a\\b", "a b", "a\tb", "é", "a\nb"])
def test_invalid_cookie_contexts(context: str) -> None:
    with pytest.raises(ValueError):
        validate_cookie_context(context)
    with pytest.raises(ValueError):
        make_server(cookie_context=context)


@pytest.mark.parametrize("context", ["org_freedesktop_general", "foo", "foo\x7f"])
def test_valid_cookie_contexts(context: str) -> None:
    validate_cookie_context(context)


# --- constructor checks -----------------------------------------------------------------------------------


def test_server_rejects_unknown_mechanisms_and_bad_guids() -> None:
    with pytest.raises(ValueError, match="KERBEROS_V4"):
        make_server(mechanisms=(EXTERNAL, "KERBEROS_V4"))
    with pytest.raises(ValueError, match="32 hex digits"):
        ServerAuthenticator("not-a-guid")


def test_client_rejects_unknown_mechanisms() -> None:
    with pytest.raises(ValueError):
        ClientAuthenticator(mechanisms=("PLAIN",))
    with pytest.raises(ValueError):
        ClientAuthenticator(mechanisms=())


# --- the client machine ---------------------------------------------------------------------------------


def test_client_initial_bytes() -> None:
    assert ClientAuthenticator(uid=1000).initial_bytes() == b"\0AUTH EXTERNAL 31303030\r\n"
    assert ClientAuthenticator().initial_bytes() == b"\0AUTH EXTERNAL " + hexed(os.getuid()) + b"\r\n"
    assert ClientAuthenticator(uid=None).initial_bytes() == b"\0AUTH EXTERNAL\r\n"
    assert ClientAuthenticator(mechanisms=(ANONYMOUS,), anonymous_trace="me").initial_bytes() == \
        b"\0AUTH ANONYMOUS 6d65\r\n"


def test_client_call_order_is_enforced() -> None:
    client = ClientAuthenticator()
    with pytest.raises(RuntimeError):
        client.receive_data(OK)
    client.initial_bytes()
    with pytest.raises(RuntimeError):
        client.initial_bytes()


def test_client_full_conversation_with_fd_negotiation() -> None:
    client = ClientAuthenticator(uid=1000)
    client.initial_bytes()
    play(client, [(OK, b"NEGOTIATE_UNIX_FD\r\n"), (b"AGREE_UNIX_FD\r\n", b"BEGIN\r\n")])
    assert client.done and client.guid == GUID and client.unix_fd and client.mechanism == EXTERNAL


def test_client_without_fd_negotiation_begins_after_ok() -> None:
    client = ClientAuthenticator(uid=1000, negotiate_unix_fd=False)
    client.initial_bytes()
    play(client, [(OK, b"BEGIN\r\n")])
    assert client.done and not client.unix_fd


def test_client_accepts_fd_refusal() -> None:
    client = ClientAuthenticator(uid=1000)
    client.initial_bytes()
    play(client, [(OK, b"NEGOTIATE_UNIX_FD\r\n"), (b'ERROR "no"\r\n', b"BEGIN\r\n")])
    assert client.done and not client.unix_fd


def test_client_answers_the_external_challenge_and_keeps_leftover() -> None:
    client = ClientAuthenticator(uid=None, negotiate_unix_fd=False)
    client.initial_bytes()
    play(client, [(b"DATA\r\n", b"DATA\r\n"), (OK + b"extra", b"BEGIN\r\n")])
    assert client.leftover == b"extra"


def test_client_cancels_on_error_then_falls_back() -> None:
    client = ClientAuthenticator(uid=1000, mechanisms=(EXTERNAL, ANONYMOUS))
    client.initial_bytes()
    play(client, [(b'ERROR "confused"\r\n', b"CANCEL\r\n"),
                  (b"REJECTED EXTERNAL ANONYMOUS\r\n", b"AUTH ANONYMOUS " + b"busd".hex().encode() + b"\r\n")])
    assert client.mechanism == ANONYMOUS


def test_client_gives_up_when_nothing_it_can_use_is_offered() -> None:
    client = ClientAuthenticator(uid=1000, mechanisms=(EXTERNAL, ANONYMOUS))
    client.initial_bytes()
    with pytest.raises(AuthError, match="it offers DBUS_COOKIE_SHA1 and we can use EXTERNAL ANONYMOUS"):
        client.receive_data(b"REJECTED DBUS_COOKIE_SHA1\r\n")


def test_client_does_not_retry_a_rejected_mechanism() -> None:
    client = ClientAuthenticator(uid=1000)
    client.initial_bytes()
    with pytest.raises(AuthError, match="EXTERNAL: rejected"):
        client.receive_data(b"REJECTED EXTERNAL\r\n")


@pytest.mark.parametrize("reply", [b"OK\r\n", b"OK xyz\r\n", b"OK 123\r\n"])
def test_client_rejects_a_malformed_guid(reply: bytes) -> None:
    client = ClientAuthenticator()
    client.initial_bytes()
    with pytest.raises(AuthError, match="GUID"):
        client.receive_data(reply)


@pytest.mark.parametrize("state_script, bad", [
    ([(b'ERROR\r\n', b"CANCEL\r\n")], b"OK " + GUID.encode() + b"\r\n"),
    ([(OK, b"NEGOTIATE_UNIX_FD\r\n")], b"DATA\r\n"),
])
def test_client_unexpected_replies_are_fatal(state_script, bad: bytes) -> None:
    client = ClientAuthenticator()
    client.initial_bytes()
    play(client, state_script)
    with pytest.raises(AuthError, match="unexpected reply"):
        client.receive_data(bad)


def test_client_answers_unknown_commands_with_error() -> None:
    client = ClientAuthenticator()
    client.initial_bytes()
    play(client, [(b"AGREE_UNIX_FD\r\n", b'ERROR "Unknown command"\r\n'),
                  (b"DATA z\r\n", b'ERROR "Invalid hex encoding"\r\n')])


def test_client_non_ascii_from_server_is_fatal() -> None:
    client = ClientAuthenticator()
    client.initial_bytes()
    with pytest.raises(AuthError):
        client.receive_data(b"OK \xff\r\n")


@pytest.mark.parametrize("challenge, error", [
    ("nospaces", "Server did not send context/ID/challenge properly"),
    ("bad.context 1 abc", "Server sent invalid cookie context"),
    ("ctx one abc", "Could not parse cookie ID as an integer"),
    ("ctx 999 abc", "Don't have the requested cookie ID"),
])
def test_client_cookie_challenge_problems(tmp_path, challenge: str, error: str) -> None:
    os.chmod(tmp_path, 0o700)
    client = ClientAuthenticator(mechanisms=(DBUS_COOKIE_SHA1,), keyring_dir=str(tmp_path))
    client.initial_bytes()
    play(client, [(b"DATA " + challenge.encode().hex().encode() + b"\r\n", f'ERROR "{error}"\r\n'.encode())])


def test_client_cookie_refuses_a_keyring_open_to_others(tmp_path) -> None:
    keyrings = tmp_path / "k"
    _, cookie_id, challenge = start_cookie(cookie_server(keyrings))
    os.chmod(keyrings, 0o777)  # anyone could have planted this cookie now
    client = ClientAuthenticator(mechanisms=(DBUS_COOKIE_SHA1,), keyring_dir=str(keyrings))
    client.initial_bytes()
    data = f"org_freedesktop_general {cookie_id} {challenge}".encode().hex().encode()
    play(client, [(b"DATA " + data + b"\r\n", b'ERROR "Don\'t have the requested cookie ID"\r\n')])
    with pytest.raises(AuthError, match="run chmod 700"):
        client.receive_data(b"REJECTED DBUS_COOKIE_SHA1\r\n")


# --- client machine against server machine -----------------------------------------------------------


@pytest.mark.parametrize("server_options, client_options, mechanism, uid", [
    ({}, {"uid": 1000}, EXTERNAL, 1000),
    ({}, {"uid": None}, EXTERNAL, 1000),
    ({"mechanisms": (EXTERNAL, ANONYMOUS), "allow_anonymous": True}, {"mechanisms": (ANONYMOUS, EXTERNAL)},
     ANONYMOUS, None),
    ({"mechanisms": (EXTERNAL, ANONYMOUS), "allow_anonymous": True, "peer_uid": None},
     {"mechanisms": (EXTERNAL, ANONYMOUS)}, ANONYMOUS, None),
    ({"mechanisms": (EXTERNAL, DBUS_COOKIE_SHA1), "peer_uid": None},
     {"uid": ME, "mechanisms": (EXTERNAL, DBUS_COOKIE_SHA1, ANONYMOUS)}, DBUS_COOKIE_SHA1, ME),
    ({"mechanisms": (DBUS_COOKIE_SHA1,)}, {"uid": ME, "mechanisms": (EXTERNAL, DBUS_COOKIE_SHA1)},
     DBUS_COOKIE_SHA1, ME),
])
def test_client_against_server(tmp_path, server_options: dict, client_options: dict, mechanism: str, uid) -> None:
    server = make_server(keyring_dir=str(tmp_path / "k"), **server_options)
    client = ClientAuthenticator(keyring_dir=str(tmp_path / "k"), **client_options)
    handshake(client, server)
    assert server.mechanism == client.mechanism == mechanism
    assert server.uid == uid
    assert client.guid == GUID and client.unix_fd and server.unix_fd


@pytest.mark.parametrize("unix_fd_possible, negotiate", [(True, False), (False, True), (False, False)])
def test_client_against_server_fd_negotiation(unix_fd_possible: bool, negotiate: bool) -> None:
    server = make_server(unix_fd_possible=unix_fd_possible)
    client = ClientAuthenticator(uid=1000, negotiate_unix_fd=negotiate)
    handshake(client, server)
    assert server.unix_fd is client.unix_fd is False


def test_client_against_server_cookie_falls_back_to_anonymous_without_keyring(tmp_path) -> None:
    os.chmod(tmp_path, 0o700)
    server = make_server(mechanisms=(DBUS_COOKIE_SHA1, ANONYMOUS), allow_anonymous=True,
                         keyring_dir=str(tmp_path / "server"))
    client = ClientAuthenticator(mechanisms=(DBUS_COOKIE_SHA1, ANONYMOUS), keyring_dir=str(tmp_path / "elsewhere"))
    handshake(client, server)
    assert server.mechanism == ANONYMOUS
    assert any("Don't have the requested cookie ID" in problem for problem in client.problems)


def test_client_against_server_with_nothing_in_common() -> None:
    server = make_server(mechanisms=(EXTERNAL,))
    client = ClientAuthenticator(uid=1, mechanisms=(EXTERNAL, ANONYMOUS))
    with pytest.raises(AuthError, match="EXTERNAL: rejected"):
        handshake(client, server)
