"""D-Bus address parsing and formatting: every transport, escaping, errors, environment helpers."""

from __future__ import annotations

import dataclasses
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from busd.wire.address import (
    DEFAULT_SYSTEM_BUS_ADDRESS, OPTIONALLY_ESCAPED, Address, AddressError, escape_value,
    format_addresses, parse_address, parse_addresses, runtime_dir, session_bus_address,
    system_bus_address, unescape_value,
)

GUID = "0123456789abcdef0123456789abcdef"

# Any text that UTF-8 (with surrogateescape for raw bytes) can carry.
values = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1),
    st.binary(min_size=1).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
)
ports = st.integers(0, 65535).map(str)
guids = st.text(alphabet="0123456789abcdefABCDEF", min_size=32, max_size=32)


def _with_guid(params: st.SearchStrategy[dict[str, str]]) -> st.SearchStrategy[dict[str, str]]:
    return st.tuples(params, st.none() | guids).map(
        lambda pair: pair[0] if pair[1] is None else {**pair[0], "guid": pair[1]})


def _unix_params() -> st.SearchStrategy[dict[str, str]]:
    return st.one_of(
        st.builds(lambda v: {"path": v}, values),
        st.builds(lambda v: {"abstract": v}, values),
        st.builds(lambda v: {"dir": v}, values),
        st.builds(lambda v: {"tmpdir": v}, values),
        st.just({"runtime": "yes"}),
    )


def _tcp_params(extra: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[dict[str, str]]:
    optional = {"host": values, "port": ports, "family": st.sampled_from(["ipv4", "ipv6"]),
                "bind": values, **extra}
    return st.fixed_dictionaries({}, optional=optional)


addresses = st.one_of(
    st.builds(Address, st.just("unix"), _with_guid(_unix_params())),
    st.builds(Address, st.just("tcp"), _with_guid(_tcp_params({}))),
    st.builds(Address, st.just("nonce-tcp"), _with_guid(_tcp_params({"noncefile": values}))),
    st.builds(Address, st.just("systemd"), _with_guid(st.just({}))),
    st.builds(Address, st.just("launchd"), st.fixed_dictionaries({"env": values})),
    st.builds(Address, st.just("autolaunch"), st.fixed_dictionaries({}, optional={"scope": values})),
    st.builds(Address, st.just("unixexec"),
              st.fixed_dictionaries({"path": values}, optional={"argv0": values, "argv1": values})),
)


@given(addresses)
def test_format_then_parse_gives_the_same_address(address: Address) -> None:
    text = address.format()
    assert parse_address(text) == address
    assert str(address) == text


@given(st.lists(addresses, min_size=1, max_size=4))
def test_address_lists_round_trip(address_list: list[Address]) -> None:
    assert parse_addresses(format_addresses(address_list)) == address_list


@given(values)
def test_escaping_round_trips_and_uses_only_safe_characters(value: str) -> None:
    escaped = escape_value(value)
    assert unescape_value(escaped) == value
    assert all(ord(char) in OPTIONALLY_ESCAPED or char == "%" for char in escaped)


@given(st.text(alphabet="-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_/.\\*", min_size=1))
def test_optionally_escaped_characters_stay_as_they_are(value: str) -> None:
    assert escape_value(value) == value


@pytest.mark.parametrize("value, escaped", [
    ("/tmp/a b", "/tmp/a%20b"),
    ("a,b=c;d:e", "a%2cb%3dc%3bd%3ae"),
    ("100%", "100%25"),
    ("é", "%c3%a9"),
    ("C:\\dbus*", "C%3a\\dbus*"),
    ("\udcff", "%ff"),  # a byte that is not UTF-8, carried as a surrogate escape
])
def test_escape_examples(value: str, escaped: str) -> None:
    assert escape_value(value) == escaped
    assert unescape_value(escaped) == value


def test_unescape_accepts_upper_case_hex_and_escaped_safe_bytes() -> None:
    assert unescape_value("%2F%2ftmp%41") == "//tmpA"


@pytest.mark.parametrize("text, expected", [
    ("unix:path=/run/user/1000/bus", [Address("unix", {"path": "/run/user/1000/bus"})]),
    ("unix:abstract=/tmp/dbus-Xy12,guid=" + GUID,
     [Address("unix", {"abstract": "/tmp/dbus-Xy12", "guid": GUID})]),
    ("unix:dir=/tmp", [Address("unix", {"dir": "/tmp"})]),
    ("unix:tmpdir=/tmp", [Address("unix", {"tmpdir": "/tmp"})]),
    ("unix:runtime=yes", [Address("unix", {"runtime": "yes"})]),
    ("tcp:host=localhost,port=0", [Address("tcp", {"host": "localhost", "port": "0"})]),
    ("tcp:host=::1,bind=*,port=55556,family=ipv6".replace("::1", "%3a%3a1"),
     [Address("tcp", {"host": "::1", "bind": "*", "port": "55556", "family": "ipv6"})]),
    ("nonce-tcp:host=127.0.0.1,port=4000,noncefile=/tmp/nonce",
     [Address("nonce-tcp", {"host": "127.0.0.1", "port": "4000", "noncefile": "/tmp/nonce"})]),
    ("systemd:", [Address("systemd", {})]),
    ("launchd:env=DBUS_LAUNCHD_SESSION_BUS_SOCKET",
     [Address("launchd", {"env": "DBUS_LAUNCHD_SESSION_BUS_SOCKET"})]),
    ("autolaunch:", [Address("autolaunch", {})]),
    ("autolaunch:scope=*user", [Address("autolaunch", {"scope": "*user"})]),
    ("unixexec:path=/usr/bin/ssh,argv1=host", [Address("unixexec", {"path": "/usr/bin/ssh", "argv1": "host"})]),
    ("unix:path=/a;tcp:port=1;", [Address("unix", {"path": "/a"}), Address("tcp", {"port": "1"})]),
    ("unix:path=/a,", [Address("unix", {"path": "/a"})]),
    ("unix:path=/a,future_key=kept", [Address("unix", {"path": "/a", "future_key": "kept"})]),
])
def test_parse_examples(text: str, expected: list[Address]) -> None:
    assert parse_addresses(text) == expected


def test_unknown_transport_error_lists_no_transports():
    # It used to list launchd, autolaunch and unixexec, which busd cannot listen on.
    with pytest.raises(AddressError) as info:
        parse_address("carrier-pigeon:coop=1")
    assert str(info.value) == "unknown transport 'carrier-pigeon'"


@pytest.mark.parametrize("text, message", [
    ("", "empty D-Bus address"),
    ("unix", "needs a transport and a colon"),
    ("unix:path=/a;;tcp:port=1", "needs a transport and a colon"),
    ("carrier-pigeon:coop=1", "unknown transport 'carrier-pigeon'"),
    (":path=/a", "unknown transport ''"),
    ("unix:", "unix address needs one of path="),
    ("unix:guid=" + GUID, "unix address needs one of path="),
    ("unix:path=/a,abstract=/b", "has both path= and abstract="),
    ("unix:tmpdir=/tmp,runtime=yes", "has both tmpdir= and runtime="),
    ("unix:runtime=no", "the only value is runtime=yes"),
    ("unix:path=/a,path=/b", "key path= is given twice"),
    ("unix:path", "is not key=value"),
    ("unix:path=", "is not key=value"),
    ("unix:=/a", "is not key=value"),
    ("unix:path=/a,,guid=" + GUID, "is not key=value"),
    ("unix:path=/a%2", "'%' must be followed by two hex digits"),
    ("unix:path=/a%zz", "'%' must be followed by two hex digits"),
    ("unix:path=/a b", "must be escaped as %20"),
    ("unix:path=/tmp/é", "must be escaped as %c3%a9"),
    ("unix:path=/a,guid=1234", "is not 32 hex digits"),
    ("unix:path=/a,k y=1", "bad key 'k y'"),
    ("tcp:port=65536", "is not a number from 0 to 65535"),
    ("tcp:port=-1", "is not a number from 0 to 65535"),
    ("tcp:port=http", "is not a number from 0 to 65535"),
    ("nonce-tcp:port=99999", "is not a number from 0 to 65535"),
    ("tcp:port=1,family=ipx", "use ipv4 or ipv6"),
    ("launchd:", "launchd address is missing env="),
    ("unixexec:argv0=x", "unixexec address is missing path="),
])
def test_parse_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_addresses(text)
    assert message in str(caught.value)


def test_address_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        parse_address("nope")


def test_address_is_checked_when_built_directly() -> None:
    with pytest.raises(AddressError, match="needs a non-empty value"):
        Address("unix", {"path": ""})
    with pytest.raises(AddressError, match="has both"):
        Address("unix", {"path": "/a", "dir": "/b"})
    with pytest.raises(AddressError, match="cannot be encoded"):
        Address("unix", {"path": "\ud800x"}).format()


def test_address_is_immutable_and_hashable() -> None:
    params = {"path": "/a"}
    address = Address("unix", params)
    params["path"] = "/changed"
    assert address.params == {"path": "/a"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        address.transport = "tcp"  # type: ignore[misc]
    same = parse_address("unix:path=/a")
    assert {address, same} == {address}


def test_parameter_order_is_kept_when_formatting() -> None:
    text = "tcp:port=1,host=localhost,family=ipv4"
    assert parse_address(text).format() == text


def test_guid_property() -> None:
    assert parse_address(f"unix:path=/a,guid={GUID}").guid == GUID
    assert parse_address("unix:path=/a").guid is None


@pytest.mark.parametrize("text, connectable", [
    ("unix:path=/a", True),
    ("unix:abstract=/a", True),
    ("unix:dir=/tmp", False),
    ("unix:tmpdir=/tmp", False),
    ("unix:runtime=yes", False),
    ("tcp:host=localhost,port=1", True),
    ("tcp:host=localhost", False),
    ("nonce-tcp:port=1", False),
    ("nonce-tcp:port=1,noncefile=/n", True),
    ("systemd:", False),
    ("autolaunch:", True),
])
def test_connectable(text: str, connectable: bool) -> None:
    assert parse_address(text).connectable is connectable


def test_session_bus_address_prefers_the_environment_variable(tmp_path) -> None:
    env = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/x", "XDG_RUNTIME_DIR": str(tmp_path)}
    assert session_bus_address(env) == "unix:path=/x"


def test_session_bus_address_falls_back_to_the_runtime_dir_socket(tmp_path) -> None:
    directory = tmp_path / "run dir"  # a space, so the fallback must escape the path
    directory.mkdir()
    with pytest.raises(AddressError, match="DBUS_SESSION_BUS_ADDRESS is not set"):
        session_bus_address({"XDG_RUNTIME_DIR": str(directory)})
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(directory / "bus"))
        address = session_bus_address({"XDG_RUNTIME_DIR": str(directory)})
    finally:
        listener.close()
    assert parse_addresses(address) == [Address("unix", {"path": str(directory / "bus")})]
    assert " " not in address


def test_session_bus_address_ignores_a_regular_file_named_bus(tmp_path) -> None:
    (tmp_path / "bus").write_text("not a socket")
    with pytest.raises(AddressError):
        session_bus_address({"XDG_RUNTIME_DIR": str(tmp_path)})


def test_system_bus_address() -> None:
    assert system_bus_address({}) == DEFAULT_SYSTEM_BUS_ADDRESS
    assert parse_addresses(DEFAULT_SYSTEM_BUS_ADDRESS)[0].params["path"] == "/var/run/dbus/system_bus_socket"
    assert system_bus_address({"DBUS_SYSTEM_BUS_ADDRESS": "tcp:port=1"}) == "tcp:port=1"


def test_runtime_dir() -> None:
    assert runtime_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}) == "/run/user/1000"
    assert runtime_dir({"XDG_RUNTIME_DIR": "relative/dir"}) is None
    assert runtime_dir({"XDG_RUNTIME_DIR": ""}) is None
    assert runtime_dir({}) is None


def test_helpers_read_os_environ_by_default(monkeypatch) -> None:
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/from/environ")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/system/from/environ")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    assert session_bus_address() == "unix:path=/from/environ"
    assert system_bus_address() == "unix:path=/system/from/environ"
    assert runtime_dir() == "/run/user/4242"




@pytest.mark.parametrize("env", [
    {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/session", "DBUS_SYSTEM_BUS_ADDRESS": "tcp:host=localhost,port=1"},
    {"XDG_RUNTIME_DIR": "/nonexistent/runtime"},
    {},
], ids=["variables", "runtime dir without a socket", "nothing"])
def test_the_sdk_and_busdctl_find_buses_as_busd_wire_does(monkeypatch, env) -> None:
    """busd_client.connect() and busdctl resolve "session"/"system" with busd.wire's lookup alone."""
    from busd_client import resolve_address
    from busd_client.errors import Disconnected
    from busdctl.connection import choose_bus
    from busdctl.errors import CommandError

    for name in ("DBUS_SESSION_BUS_ADDRESS", "DBUS_SYSTEM_BUS_ADDRESS", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert resolve_address("system") == choose_bus(None, "system").address == system_bus_address()
    try:
        expected = session_bus_address()
    except AddressError:
        with pytest.raises(Disconnected):
            resolve_address("session")
        with pytest.raises(CommandError, match="Cannot find the user bus"):
            choose_bus(None, "user")
    else:
        assert resolve_address(None) == resolve_address("session") == choose_bus(None, "user").address == expected
