"""The DBUS_COOKIE_SHA1 keyring files (busd.transport.keyring) and cookie context names."""

from __future__ import annotations

import ast
import os
import pwd
import time
from pathlib import Path

import pytest
from saslplay import make_server

import busd.wire
from busd.transport.keyring import CookieKeyring, KeyringDirectory
from busd.wire.sasl import CookieStore, KeyringError, validate_cookie_context


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


# --- the keyrings of a user, as the SASL machines reach them ---------------------------------------------


def test_keyring_directory_is_the_users_dbus_keyrings_by_default() -> None:
    store: CookieStore = KeyringDirectory()
    assert isinstance(store, KeyringDirectory)
    home = pwd.getpwuid(os.geteuid()).pw_dir
    assert store.keyring("ctx").path == os.path.join(home, ".dbus-keyrings", "ctx")
    assert KeyringDirectory("/somewhere").keyring("ctx").path == "/somewhere/ctx"


def test_keyring_directory_serves_both_sides(tmp_path) -> None:
    store = KeyringDirectory(str(tmp_path / "k"))
    cookie = store.best_cookie("ctx")
    assert store.find("ctx", cookie.id) == cookie
    assert store.find("other", cookie.id) is None


FILE_CALLS = {"open", "mkdir", "unlink", "replace", "stat", "listdir", "chmod", "fdopen"}


def test_the_sasl_machines_touch_no_files() -> None:
    """File I/O is busd.transport.keyring's; busd/wire reaches the secrets only through CookieStore."""
    wire = Path(busd.wire.__file__).parent
    calls = []
    for path in sorted(wire.glob("sasl*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                function = node.func
                name = function.attr if isinstance(function, ast.Attribute) \
                    else function.id if isinstance(function, ast.Name) else ""
                if name in FILE_CALLS:
                    calls.append(f"{path.name}:{node.lineno}: {name}()")
    assert calls == []
