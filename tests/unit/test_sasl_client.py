"""The client SASL machine, alone and against the server machine."""

from __future__ import annotations

import os

import pytest
from saslplay import GUID, ME, OK, cookie_server, handshake, hexed, make_server, play, start_cookie

from busd.transport.keyring import KeyringDirectory
from busd.wire.sasl import ANONYMOUS, DBUS_COOKIE_SHA1, EXTERNAL, AuthError
from busd.wire.sasl_client import ClientAuthenticator


# --- constructor checks -----------------------------------------------------------------------------------


def test_client_rejects_unknown_mechanisms() -> None:
    with pytest.raises(ValueError):
        ClientAuthenticator(mechanisms=("PLAIN",))
    with pytest.raises(ValueError):
        ClientAuthenticator(mechanisms=())


def test_client_refuses_cookie_sha1_without_a_keyring() -> None:
    with pytest.raises(ValueError, match="needs a keyring"):
        ClientAuthenticator(mechanisms=(EXTERNAL, DBUS_COOKIE_SHA1))


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
    client = ClientAuthenticator(mechanisms=(DBUS_COOKIE_SHA1,), keyring=KeyringDirectory(str(tmp_path)))
    client.initial_bytes()
    play(client, [(b"DATA " + challenge.encode().hex().encode() + b"\r\n", f'ERROR "{error}"\r\n'.encode())])


def test_client_cookie_refuses_a_keyring_open_to_others(tmp_path) -> None:
    keyrings = tmp_path / "k"
    _, cookie_id, challenge = start_cookie(cookie_server(keyrings))
    os.chmod(keyrings, 0o777)  # anyone could have planted this cookie now
    client = ClientAuthenticator(mechanisms=(DBUS_COOKIE_SHA1,), keyring=KeyringDirectory(str(keyrings)))
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
    server = make_server(keyring=KeyringDirectory(str(tmp_path / "k")), **server_options)
    client = ClientAuthenticator(keyring=KeyringDirectory(str(tmp_path / "k")), **client_options)
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
                         keyring=KeyringDirectory(str(tmp_path / "server")))
    client = ClientAuthenticator(mechanisms=(DBUS_COOKIE_SHA1, ANONYMOUS),
                                 keyring=KeyringDirectory(str(tmp_path / "elsewhere")))
    handshake(client, server)
    assert server.mechanism == ANONYMOUS
    assert any("Don't have the requested cookie ID" in problem for problem in client.problems)


def test_client_against_server_with_nothing_in_common() -> None:
    server = make_server(mechanisms=(EXTERNAL,))
    client = ClientAuthenticator(uid=1, mechanisms=(EXTERNAL, ANONYMOUS))
    with pytest.raises(AuthError, match="EXTERNAL: rejected"):
        handshake(client, server)
