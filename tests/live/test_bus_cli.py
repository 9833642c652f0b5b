"""Live tests with the stock command-line clients (busctl, gdbus, dbus-send) against the bus driver."""

from __future__ import annotations

import os
import re

import pytest

from busclient import BUS_KINDS, DBUS, DBUS_PATH, RawClient, run_tool, running_bus, shared_bus  # noqa: F401

UNIQUE = re.compile(r":1\.[0-9]+")


def test_busctl_list_shows_the_bus_and_its_clients(shared_bus):
    with RawClient(shared_bus.address) as client:
        client.request_name("org.example.Cli.Listed")
        out = run_tool(shared_bus, "busctl", "--user", "list", "--no-pager").stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert rows[DBUS][1] == str(shared_bus.process.pid)
    assert rows["org.example.Cli.Listed"][4] == client.unique_name
    assert rows[client.unique_name][1] == str(os.getpid())


def test_busctl_call_and_properties(shared_bus):
    out = run_tool(shared_bus, "busctl", "--user", "call", DBUS, DBUS_PATH, DBUS, "GetNameOwner", "s", DBUS).stdout
    assert out.strip() == f's "{DBUS}"'
    out = run_tool(shared_bus, "busctl", "--user", "get-property", DBUS, DBUS_PATH, DBUS, "Interfaces").stdout
    assert out.strip() == 'as 2 "org.freedesktop.DBus.Monitoring" "org.freedesktop.DBus.Debug.Stats"'
    failed = run_tool(shared_bus, "busctl", "--user", "call", "org.example.Cli.Nobody", "/", "org.example.X", "Y",
                      check=False)
    assert failed.returncode == 1
    assert "was not provided by any .service files" in failed.stderr


def test_busctl_tree_and_status(shared_bus):
    tree = run_tool(shared_bus, "busctl", "--user", "tree", "--no-pager", DBUS).stdout
    assert tree.split() == ["└─/org/freedesktop/DBus"]
    status = run_tool(shared_bus, "busctl", "--user", "status", "--no-pager", DBUS).stdout
    assert f"PID={shared_bus.process.pid}\n" in status
    assert f"UID={os.getuid()}\n" in status


def test_gdbus_call(shared_bus):
    out = run_tool(shared_bus, "gdbus", "call", "--session", "--dest", DBUS, "--object-path", DBUS_PATH,
                   "--method", f"{DBUS}.ListNames").stdout
    names = re.findall(r"'([^']+)'", out)
    assert names[0] == DBUS and all(UNIQUE.fullmatch(n) or "." in n for n in names)
    failed = run_tool(shared_bus, "gdbus", "call", "--session", "--dest", DBUS, "--object-path", DBUS_PATH,
                      "--method", f"{DBUS}.GetNameOwner", "org.example.Cli.Nobody", check=False)
    assert failed.returncode == 1
    assert "GDBus.Error:org.freedesktop.DBus.Error.NameHasNoOwner" in failed.stderr


def test_dbus_send(shared_bus):
    out = run_tool(shared_bus, "dbus-send", "--session", "--print-reply", f"--dest={DBUS}", DBUS_PATH,
                   f"{DBUS}.NameHasOwner", f"string:{DBUS}").stdout
    first, value = out.strip().splitlines()
    assert first.startswith("method return ") and "sender=org.freedesktop.DBus" in first
    assert value.strip() == "boolean true"
    failed = run_tool(shared_bus, "dbus-send", "--session", "--print-reply", "--dest=org.example.Cli.Nobody", "/",
                      "org.example.X.Y", check=False)
    assert failed.returncode == 1
    assert failed.stderr.startswith("Error org.freedesktop.DBus.Error.ServiceUnknown:")


def _normalized(text: str) -> str:
    return UNIQUE.sub(":1.N", text)


INTROSPECTORS = [
    ("busctl", "--user", "introspect", "--no-pager", DBUS, DBUS_PATH),
    ("busctl", "--user", "introspect", "--no-pager", "--xml-interface", DBUS, DBUS_PATH),
    ("gdbus", "introspect", "--session", "--dest", DBUS, "--object-path", DBUS_PATH),
    ("gdbus", "introspect", "--session", "--dest", DBUS, "--object-path", "/org/freedesktop"),
]


def test_introspection_reads_the_same_on_both_buses():
    outputs: dict[str, list[str]] = {}
    for kind in BUS_KINDS:
        with running_bus(kind) as bus:
            outputs[kind] = [_normalized(run_tool(bus, *command).stdout) for command in INTROSPECTORS]
    for command, busd_text, reference in zip(INTROSPECTORS, outputs["busd"], outputs["dbus-daemon"]):
        assert busd_text == reference, " ".join(command)
        assert "org.freedesktop.DBus.Peer" in busd_text
