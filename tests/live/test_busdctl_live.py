"""busdctl against real buses (busd and dbus-daemon) with a real service, checked against systemd's busctl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from buses import busd_available, start_bus
from test_busdctl_service import (BUS_KINDS, SERVICE_INTERFACE, SERVICE_NAME, SERVICE_PATH, SERVICE_PATHS,  # noqa: F401
                                  Run, both, busctl, busctl_command, busdctl, busdctl_command, demo, interrupt, run,
                                  run_all, shared_demo, start_demo, start_watcher)

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(shutil.which("busctl") is None, reason="systemd's busctl is needed to compare against"),
]

MONITORING = "Monitoring bus message stream"
# Messages reach a monitor within milliseconds; this only bounds how long a broken bus costs.
MONITOR_TIMEOUT = 10.0


def _ok(result: Run) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def _same(address: str, *args: str) -> str:
    """Run one command with busdctl and busctl; both must succeed and print the same; return it."""
    ours, theirs = both(address, *args)
    assert _ok(ours) == _ok(theirs), args
    return ours.stdout


def _key_values(text: str) -> dict[str, str]:
    """KEY=VALUE lines, with busctl's wrapped continuation lines joined to their key."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith(" ") and key is not None:
            fields[key] += " " + line.strip()
        elif "=" in line:
            key, value = line.split("=", 1)
            fields[key] = value
    return {k: " ".join(v.split()) for k, v in fields.items()}


def _list_rows(text: str) -> dict[str, list[str]]:
    """busctl list's table by name: PID, PROCESS, USER, CONNECTION, UNIT, SESSION, DESCRIPTION."""
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["NAME", "PID"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:] if line.strip()}


# ---- list ----

def test_list_shows_the_same_peers_as_busctl(shared_demo):
    bus, service = shared_demo
    ours, theirs = run_all([busdctl_command(bus.address, "list", "--json=short"),
                            busctl_command(bus.address, "list")])
    entries = {e["name"]: e for e in json.loads(_ok(ours))}
    rows = _list_rows(_ok(theirs))
    # Compare the long-lived peers; short-lived clients (each tool itself) come and go.
    lasting = {str(service.process.pid), str(bus.process.pid)}
    assert ({n for n, e in entries.items() if str(e["pid"]) in lasting}
            == {n for n, row in rows.items() if row[0] in lasting}
            == {SERVICE_NAME, service.unique_name, "org.freedesktop.DBus"})
    for name in (SERVICE_NAME, service.unique_name, "org.freedesktop.DBus"):
        pid, process, user, connection = rows[name][:4]
        entry = entries[name]
        assert [str(entry["pid"]), entry["process"], entry["user"], entry["connection"] or "-"] == \
            [pid, process, user, connection]
    assert entries[SERVICE_NAME]["connection"] == service.unique_name
    assert entries["org.freedesktop.DBus"]["pid"] == bus.process.pid


def test_list_table_and_filters(shared_demo):
    bus, service = shared_demo
    table, unique, acquired, no_legend = run_all([
        busdctl_command(bus.address, "list"),
        busdctl_command(bus.address, "list", "--unique"),
        busdctl_command(bus.address, "list", "--acquired"),
        busdctl_command(bus.address, "list", "--acquired", "--no-legend")])
    assert _list_rows(_ok(table))[SERVICE_NAME][3] == service.unique_name
    unique_names = _list_rows(_ok(unique))
    assert service.unique_name in unique_names and all(name.startswith(":") for name in unique_names)
    assert set(_list_rows(_ok(acquired))) == {SERVICE_NAME, "org.freedesktop.DBus"}
    assert [line.split()[0] for line in _ok(no_legend).splitlines()] == [SERVICE_NAME, "org.freedesktop.DBus"]


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_activatable_names_and_auto_start(kind):
    if kind == "busd" and not busd_available():
        pytest.skip("the busd daemon is not built yet")
    services = tempfile.mkdtemp(prefix="busdctl-services-")
    with open(os.path.join(services, "org.example.Sleepy.service"), "w") as f:
        f.write("[D-BUS Service]\nName=org.example.Sleepy\nExec=/bin/false\n")
    bus = start_bus(kind, extra_config=f"<servicedir>{services}</servicedir>")
    try:
        ours, theirs = (_list_rows(_ok(r)) for r in both(bus.address, "list", "--activatable"))
        assert set(ours) == set(theirs)
        if "org.example.Sleepy" not in theirs:
            pytest.skip(f"{kind} does not list services from <servicedir> yet (busctl agrees with busdctl)")
        assert ours["org.example.Sleepy"] == ["-", "-", "-", "(activatable)", "-", "-", "-"]
        # With --auto-start=no the bus must not even try to start it.
        refused = busdctl(bus.address, "call", "--auto-start=no", "org.example.Sleepy", "/", "org.example.X", "Y")
        assert refused.returncode == 1
        assert "org.freedesktop.DBus.Error.NameHasNoOwner" in refused.stderr  # dbus-daemon's answer
        started = busdctl(bus.address, "call", "org.example.Sleepy", "/", "org.example.X", "Y")
        assert started.returncode == 1
        assert "org.freedesktop.DBus.Error.Spawn" in started.stderr
    finally:
        bus.stop()
        shutil.rmtree(services, ignore_errors=True)


# ---- status ----

def test_status_of_a_service_matches_busctl(shared_demo):
    bus, service = shared_demo
    ours_run, theirs_run, ours_json = run_all([busdctl_command(bus.address, "status", SERVICE_NAME),
                                               busctl_command(bus.address, "status", SERVICE_NAME),
                                               busdctl_command(bus.address, "status", "--json=short", SERVICE_NAME)])
    ours, theirs = _key_values(_ok(ours_run)), _key_values(_ok(theirs_run))
    assert ours["PID"] == str(service.process.pid)
    assert ours["UniqueName"] == service.unique_name
    assert ours["WellKnownNames"] == SERVICE_NAME
    assert {"PID", "UID", "Comm", "CommandLine", "UniqueName"} <= set(theirs)
    for key in theirs:
        if key.endswith("Capabilities"):
            assert set(ours[key].split()) == set(theirs[key].split()), key
        else:
            assert ours[key] == theirs[key], key
    as_json = json.loads(_ok(ours_json))
    assert as_json["PID"] == service.process.pid
    assert as_json["WellKnownNames"] == [SERVICE_NAME]


def test_status_of_the_bus_and_of_a_pid(shared_demo):
    bus, service = shared_demo
    ours_run, theirs_run, by_pid_run = run_all([busdctl_command(bus.address, "status"),
                                                busctl_command(bus.address, "status"),
                                                busdctl_command(bus.address, "status", str(service.process.pid))])
    ours, theirs = _key_values(_ok(ours_run)), _key_values(_ok(theirs_run))
    assert ours["BusAddress"] == bus.address
    for key in ("BusID", "PID", "Comm", "Exe", "CommandLine", "UID", "GID"):
        assert ours[key] == theirs[key], key
    assert ours["PID"] == str(bus.process.pid)
    by_pid = _key_values(_ok(by_pid_run))
    assert by_pid["UniqueName"] == service.unique_name
    assert by_pid["WellKnownNames"] == SERVICE_NAME


def test_status_of_a_missing_name_fails_with_the_error_name(shared_demo):
    bus, _ = shared_demo
    result = busdctl(bus.address, "status", "org.example.Nobody")
    assert result.returncode == 1
    assert "org.freedesktop.DBus.Error.NameHasNoOwner" in result.stderr


# ---- tree and introspect ----

def test_tree_matches_busctl(shared_demo):
    bus, _ = shared_demo
    _same(bus.address, "tree", SERVICE_NAME)
    listed = _same(bus.address, "tree", "--list", SERVICE_NAME).split()
    assert listed == sorted(SERVICE_PATHS)
    everything = json.loads(_ok(busdctl(bus.address, "tree", "--json=short")))
    assert everything[SERVICE_NAME] == sorted(SERVICE_PATHS)
    assert "/org/freedesktop/DBus" in everything["org.freedesktop.DBus"]


def test_tree_of_an_unknown_name_prints_only_the_error(shared_demo):
    bus, _ = shared_demo
    alone, with_another = run_all([busdctl_command(bus.address, "tree", "org.example.Nobody"),
                                   busdctl_command(bus.address, "tree", SERVICE_NAME, "org.example.Nobody")])
    assert (alone.returncode, alone.stdout) == (1, "")
    assert "org.freedesktop.DBus.Error.ServiceUnknown" in alone.stderr
    assert "No objects discovered" not in alone.stderr
    # The service that answers still has its tree; the unknown one only its error.
    assert with_another.returncode == 1
    assert with_another.stdout.splitlines()[0] == f"Service {SERVICE_NAME}:"
    assert "org.example.Nobody" not in with_another.stdout and "No objects" not in with_another.stdout


@pytest.mark.parametrize("where", [
    [SERVICE_NAME, SERVICE_PATH],
    [SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE],
    [SERVICE_NAME, SERVICE_PATH + "/Child"],
    ["org.freedesktop.DBus", "/org/freedesktop/DBus"],
])
def test_introspect_matches_busctl(shared_demo, where):
    bus, _ = shared_demo
    ours = _same(bus.address, "introspect", *where)
    if where[0] == SERVICE_NAME and where[1] == SERVICE_PATH:
        greeting = next(line for line in ours.splitlines() if line.startswith(".Greeting "))
        assert greeting.split() == [".Greeting", "property", "s", '"hello"', "emits-change", "writable"]


def test_introspect_json_and_xml(shared_demo):
    bus, _ = shared_demo
    interfaces = json.loads(_ok(busdctl(bus.address, "introspect", "--json=short", SERVICE_NAME, SERVICE_PATH)))
    demo_interface = next(i for i in interfaces if i["interface"] == SERVICE_INTERFACE)
    members = {m["name"]: m for m in demo_interface["members"]}
    assert members["Describe"] == {"name": "Describe", "type": "method", "signature": "a{sv}", "flags": [],
                                   "result": "as"}
    assert members["Greeting"]["value"] == {"type": "s", "data": "hello"}
    assert members["Greeting"]["flags"] == ["emits-change", "writable"]
    assert members["Tags"]["value"] == {"type": "a{sv}", "data": {"colour": {"type": "s", "data": "blue"},
                                                                 "size": {"type": "u", "data": 3}}}
    assert members["Changed"]["type"] == "signal"
    assert "<interface name=\"org.example.Demo\">" in _same(bus.address, "introspect", "--xml-interface",
                                                            SERVICE_NAME, SERVICE_PATH)
    missing = busdctl(bus.address, "introspect", SERVICE_NAME, SERVICE_PATH, "org.example.Missing")
    assert missing.returncode == 1 and "has no interface org.example.Missing" in missing.stderr


# ---- call and properties ----

CALLS = [
    ("Echo", ["s", "hello world"]),
    ("Echo", ["s", 'quote " apostrophe \' backslash \\ tab \t newline \n ü']),
    ("Add", ["ii", "40", "-2"]),
    ("Describe", ["a{sv}", "3", "name", "s", "Ada", "age", "u", "36", "tags", "as", "2", "x", "y"]),
    ("Swap", ["(su)", "foo", "7"]),
    ("Many", []),
    ("EchoV", ["v", "d", "3.25"]),
    ("EchoV", ["v", "d", "1e100"]),
    ("EchoV", ["v", "b", "yes"]),
    ("EchoV", ["v", "y", "255"]),
    ("EchoV", ["v", "n", "-32768"]),
    ("EchoV", ["v", "q", "0x10"]),
    ("EchoV", ["v", "t", "18446744073709551615"]),
    ("EchoV", ["v", "x", "-9223372036854775808"]),
    ("EchoV", ["v", "o", "/a/b"]),
    ("EchoV", ["v", "g", "a{sv}"]),
    ("EchoV", ["v", "ay", "3", "1", "2", "3"]),
    ("EchoV", ["v", "as", "0"]),
    ("EchoV", ["v", "aay", "2", "1", "5", "0"]),
    ("EchoV", ["v", "a(ii)", "2", "1", "2", "3", "4"]),
    ("EchoV", ["v", "a{sv}", "1", "k", "(ayd)", "2", "1", "2", "3.5"]),
    ("EchoV", ["v", "v", "v", "i", "3"]),
]


# Containers and odd values, where the long form and JSON have most to get wrong.
NESTED_CALLS = [CALLS[i] for i in (1, 3, 4, 5, 6, 12, 16, 19, 20, 21)]


def _call_args(options: list[str], member: str, arguments: list[str]) -> list[str]:
    # "--" ends the options, so that busctl takes "-2" as an argument too.
    return ["call", *options, "--", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE, member, *arguments]


@pytest.mark.parametrize("options, calls", [([], CALLS), (["--verbose"], NESTED_CALLS)], ids=["short", "verbose"])
def test_call_prints_what_busctl_prints(shared_demo, options, calls):
    bus, _ = shared_demo
    commands = [make(bus.address, *_call_args(options, member, arguments))
                for member, arguments in calls for make in (busdctl_command, busctl_command)]
    results = run_all(commands)
    for (member, arguments), ours, theirs in zip(calls, results[::2], results[1::2]):
        assert _ok(ours) == _ok(theirs), (member, arguments)
    first = results[0].stdout.splitlines()[0]
    assert first == ('MESSAGE "s" {' if options else 's "hello world"')


def test_call_json_has_the_same_data_as_busctl(shared_demo):
    bus, _ = shared_demo
    commands = [make(bus.address, *_call_args(["--json=short"], member, arguments))
                for member, arguments in NESTED_CALLS for make in (busdctl_command, busctl_command)]
    results = run_all(commands)
    for (member, arguments), ours, theirs in zip(NESTED_CALLS, results[::2], results[1::2]):
        assert json.loads(_ok(ours)) == json.loads(_ok(theirs)), (member, arguments)
    pretty = _ok(busdctl(bus.address, "call", "--json=pretty", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE,
                         "Add", "ii", "1", "2"))
    assert json.loads(pretty) == {"type": "i", "data": [3]} and pretty.count("\n") > 1


def test_negative_numbers_need_no_double_dash_and_quiet_or_empty_replies_print_nothing(shared_demo):
    bus, _ = shared_demo
    negative, nothing, quiet = run_all([
        busdctl_command(bus.address, "call", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE, "Add", "ii", "-40", "-2"),
        busdctl_command(bus.address, "call", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE, "Nothing"),
        busdctl_command(bus.address, "call", "-q", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE, "Echo", "s", "x")])
    assert _ok(negative) == "i -42\n"
    assert _ok(nothing) == "" and _ok(quiet) == ""


@pytest.mark.parametrize("service, arguments, error_name", [
    (SERVICE_NAME, ["Nope"], "org.freedesktop.DBus.Error.UnknownMethod"),
    (SERVICE_NAME, ["Fail"], "org.example.Demo.Error.Broken"),
    (SERVICE_NAME, ["Echo", "i", "3"], "org.freedesktop.DBus.Error.UnknownMethod"),
    (SERVICE_NAME, ["--timeout=0.3", "Hang"], "org.freedesktop.DBus.Error.NoReply"),
    ("org.example.Nobody", ["Echo", "s", "x"], "org.freedesktop.DBus.Error.ServiceUnknown"),
])
def test_call_errors_name_the_dbus_error(shared_demo, service, arguments, error_name):
    bus, _ = shared_demo
    result = busdctl(bus.address, "call", service, SERVICE_PATH, SERVICE_INTERFACE, *arguments)
    assert result.returncode == 1
    assert error_name in result.stderr
    assert "Hint:" in result.stderr or error_name.startswith("org.example")
    assert result.stdout == ""


DRIVER = ["org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus"]


def test_signature_hint_only_when_the_signature_was_wrong(shared_demo):
    """InvalidArgs answers both a wrong signature and a refused value: only the first gets the hint."""
    bus, _ = shared_demo
    wrong_signature, refused_value, wrong_property_type = run_all([
        busdctl_command(bus.address, "call", *DRIVER, "RequestName", "s", "org.example.X"),
        busdctl_command(bus.address, "call", *DRIVER, "RequestName", "su", "not a name", "0"),
        busdctl_command(bus.address, "set-property", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE, "Greeting",
                        "u", "1")])
    assert wrong_signature.returncode == refused_value.returncode == wrong_property_type.returncode == 1
    assert "org.freedesktop.DBus.Error.InvalidArgs" in wrong_signature.stderr
    assert "Hint: org.freedesktop.DBus.RequestName takes 'su', not 's'" in wrong_signature.stderr
    assert "org.freedesktop.DBus.Error.InvalidArgs" in refused_value.stderr
    assert "Hint" not in refused_value.stderr
    # dbus-next services answer a wrongly typed property with InvalidSignature.
    assert "org.freedesktop.DBus.Error.InvalidSignature" in wrong_property_type.stderr
    assert "Hint: Compare the signature" in wrong_property_type.stderr


@pytest.mark.parametrize("arguments, complaint", [
    (["Echo", "s"], "Too few parameters for signature."),
    (["Echo", "s", "a", "b"], "Too many parameters for signature."),
    (["Add", "ii", "1", "x"], "Failed to parse 'x' as signed 32bit integer"),
    (["EchoV", "v", "y", "256"], "out of range"),
    (["EchoV", "v", "b", "maybe"], "Failed to parse 'maybe' as boolean"),
    (["EchoV", "v", "o", "not/a/path"], "not a valid object path"),
    (["Echo", "a{", "x"], "Invalid signature 'a{'"),
])
def test_bad_arguments_are_usage_errors(shared_demo, arguments, complaint):
    bus, _ = shared_demo
    result = busdctl(bus.address, "call", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE, *arguments)
    assert result.returncode == 2
    assert complaint in result.stderr


def test_get_property_matches_busctl(shared_demo):
    bus, _ = shared_demo
    get = ["get-property", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE, "Greeting", "Count", "Tags"]
    assert _same(bus.address, *get).splitlines()[:2] == ['s "hello"', "u 42"]
    assert json.loads(_same(bus.address, "--json=short", *get).splitlines()[0]) == {"type": "s", "data": "hello"}
    assert _same(bus.address, "--verbose", *get).splitlines()[0] == 'STRING "hello";'
    missing = busdctl(bus.address, "get-property", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE, "Nope")
    assert missing.returncode == 1 and "Failed to get property Nope" in missing.stderr


def test_set_property(demo):
    bus, _ = demo
    _ok(busdctl(bus.address, "set-property", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE, "Greeting", "s",
                "set by busdctl"))
    assert _ok(busctl(bus.address, "get-property", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE,
                      "Greeting")) == 's "set by busdctl"\n'
    read_only = busdctl(bus.address, "set-property", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE, "Count",
                        "u", "1")
    assert read_only.returncode == 1 and "Failed to set property Count" in read_only.stderr


# ---- emit, wait, monitor ----

def _monitor_blocks(lines: list[str]) -> list[list[str]]:
    """busctl-monitor-style output split into message blocks, timestamps removed."""
    blocks: list[list[str]] = []
    for line in lines:
        if line.startswith("‣"):
            blocks.append([])
        if blocks and line:
            blocks[-1].append(line.split("  Timestamp=")[0])
    return [block for block in blocks if block[-1] == "  };"]


def test_emit_is_seen_by_busctl_monitor(shared_demo):
    bus, _ = shared_demo
    watcher, out, _ = start_watcher(busctl_command(bus.address, "monitor",
                                                   "--match=type='signal',path='/org/example/Emitted'"), MONITORING)
    try:
        _ok(busdctl(bus.address, "emit", "--destination", SERVICE_NAME, "/org/example/Emitted",
                    SERVICE_INTERFACE, "Changed", "s", "from busdctl"))
        out.expect(lambda line: 'STRING "from busdctl";' in line, "the emitted signal", MONITOR_TIMEOUT)
        out.expect(lambda line: line == "  };", "the end of the signal", MONITOR_TIMEOUT)
        [block] = [b for b in _monitor_blocks(out.lines) if "Member=Changed" in b[1]]
        assert "Path=/org/example/Emitted" in block[1] and f"Destination={SERVICE_NAME}" in block[1]
    finally:
        interrupt(watcher)


def test_wait_for_a_signal_sees_a_call_sent_without_waiting_for_the_reply(shared_demo):
    bus, _ = shared_demo
    waiter, out, _ = start_watcher(busdctl_command(bus.address, "wait", SERVICE_PATH, SERVICE_INTERFACE, "Changed"),
                                   "Waiting for signal")
    result = busdctl(bus.address, "call", "--expect-reply=no", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE,
                     "EmitChanged", "s", "no reply wanted")
    assert result.returncode == 0 and result.stdout == ""
    assert out.expect(lambda line: line.strip(), "the signal") == 's "no reply wanted"'
    assert waiter.wait(timeout=30) == 0


def test_wait_for_a_name(shared_demo):
    bus, service = shared_demo
    assert _ok(busdctl(bus.address, "wait", SERVICE_NAME)).strip() == service.unique_name
    waiter, out, _ = start_watcher(busdctl_command(bus.address, "wait", "--json=short", "org.example.Late"),
                                   "Waiting for name org.example.Late")
    late = start_demo(bus.address, "org.example.Late")
    try:
        appeared = json.loads(out.expect(lambda line: line.startswith("{"), "the owner"))
        assert appeared == {"name": "org.example.Late", "owner": late.unique_name}
        assert waiter.wait(timeout=30) == 0
    finally:
        late.stop()
    never = busdctl(bus.address, "wait", "--timeout=0.2", "org.example.Never")
    assert never.returncode == 1 and "Timed out" in never.stderr


def test_monitor_shows_the_same_messages_as_busctl_monitor(shared_demo):
    bus, service = shared_demo
    ours, our_out, _ = start_watcher(busdctl_command(bus.address, "monitor", SERVICE_NAME), MONITORING)
    theirs, their_out, _ = start_watcher(busctl_command(bus.address, "monitor", SERVICE_NAME), MONITORING)
    try:
        _ok(busctl(bus.address, "call", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE, "Describe", "a{sv}", "2",
                   "a", "s", "x", "b", "i", "3"))
        for out in (our_out, their_out):
            out.expect(lambda line: 'STRING "b=3";' in line, "the reply to Describe", MONITOR_TIMEOUT)
            out.expect(lambda line: line == "  };", "the end of the reply", MONITOR_TIMEOUT)

        def exchange(lines: list[str]) -> list[list[str]]:
            return [block for block in _monitor_blocks(lines)
                    if "Member=Describe" in block[1] or f"Sender={service.unique_name}" in block[1]]

        ours_seen = exchange(our_out.lines)
        assert [block[0].split()[1] for block in ours_seen] == ["Type=method_call", "Type=method_return"]
        assert ours_seen == exchange(their_out.lines)
        assert '                  STRING "a=x";' in ours_seen[1]
    finally:
        assert interrupt(ours) == 0
        interrupt(theirs)


def test_monitor_without_rules_sees_everything(shared_demo):
    bus, _ = shared_demo
    watcher, out, _ = start_watcher(busdctl_command(bus.address, "monitor"), MONITORING)
    try:
        _ok(busdctl(bus.address, "emit", "/org/example/Everything", SERVICE_INTERFACE, "Changed", "s", "all"))
        out.expect(lambda line: "Path=/org/example/Everything" in line, "the signal", MONITOR_TIMEOUT)
        out.expect(lambda line: line == "  };", "the end of the signal", MONITOR_TIMEOUT)
        # Without rules the driver's own signals show too, such as the emitter's NameOwnerChanged.
        assert any("Sender=org.freedesktop.DBus" in line and "Member=NameOwnerChanged" in line
                   for line in out.lines)
    finally:
        assert interrupt(watcher) == 0


def test_monitor_json_with_a_match_rule(shared_demo):
    bus, _ = shared_demo
    watcher, out, _ = start_watcher(
        busdctl_command(bus.address, "monitor", "--json=short",
                        "--match=type='signal',interface='org.example.Demo',member='Changed'"), MONITORING)
    try:
        _ok(busdctl(bus.address, "emit", "/org/example/Demo", SERVICE_INTERFACE, "Ignored", "s", "not me"))
        _ok(busdctl(bus.address, "emit", "/org/example/Demo", SERVICE_INTERFACE, "Changed", "as", "2", "a", "b"))
        out.expect(lambda line: '"member":"Changed"' in line, "the Changed signal", MONITOR_TIMEOUT)
        messages = [json.loads(line) for line in out.lines if line.startswith("{")]
        assert not any(m.get("member") == "Ignored" for m in messages)
        changed = next(m for m in messages if m.get("member") == "Changed")
        assert changed["type"] == "signal" and changed["path"] == "/org/example/Demo"
        assert changed["payload"] == {"type": "as", "data": [["a", "b"]]}
    finally:
        assert interrupt(watcher) == 0


# ---- stats ----

def test_stats_puts_the_heaviest_quota_user_first(demo):
    bus, service = demo
    _ok(busctl(bus.address, "call", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE, "AddRules", "u", "40"))
    report_run, table_run, raw_run = run_all([
        busdctl_command(bus.address, "stats", "--json=short"),
        busdctl_command(bus.address, "stats"),
        busctl_command(bus.address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                       "org.freedesktop.DBus.Debug.Stats", "GetConnectionStats", "s", service.unique_name)])
    connections = json.loads(_ok(report_run))["connections"]
    first = connections[0]
    assert first["connection"] == service.unique_name
    assert first["names"] == [SERVICE_NAME]
    assert first["stats"]["MatchRules"] >= 40
    assert first["quota"]["resource"] == "MatchRules"
    fractions = [c["quota"]["fraction"] for c in connections]
    assert fractions == sorted(fractions, reverse=True)
    # The same counter as the bus reports it to busctl.
    words = _ok(raw_run).split()
    assert int(words[words.index('"MatchRules"') + 2]) == first["stats"]["MatchRules"]
    table = _ok(table_run).splitlines()
    assert table[0].split()[:3] == ["CONNECTION", "PID", "PROCESS"]
    assert table[1].split()[0] == service.unique_name and "match rules" in table[1]


def test_stats_explains_a_bus_that_refuses_them():
    bus = start_bus("dbus-daemon", extra_config=(
        '<policy context="default"><deny send_destination="org.freedesktop.DBus" '
        'send_interface="org.freedesktop.DBus.Debug.Stats"/></policy>'))
    try:
        result = busdctl(bus.address, "stats")
        assert result.returncode == 1
        assert "org.freedesktop.DBus.Error.AccessDenied" in result.stderr
        assert "Hint:" in result.stderr
    finally:
        bus.stop()


def test_stats_by_user_shows_busd_s_ledger():
    bus = start_bus("busd")
    try:
        json_run, table_run = run_all([busdctl_command(bus.address, "stats", "--by-user", "--json=short"),
                                       busdctl_command(bus.address, "stats", "--by-user")])
        users = {user["uid"]: user for user in json.loads(_ok(json_run))["users"]}
        mine = users[os.getuid()]  # busdctl's own connection, at least
        assert mine["lines"]["Connections"]["used"] >= 1
        assert set(mine["lines"]) == {"OutgoingBytes", "OutgoingFDs", "IncomingBytes", "IncomingFDs", "MatchRules",
                                      "Names", "PendingReplies", "Connections", "IncompleteConnections"}
        assert all(line["peak"] >= line["used"] and line["quota"] > 0 for line in mine["lines"].values())
        table = _ok(table_run).splitlines()
        assert table[0].split() == ["UID", "USER", "LINE", "USED", "PEAK", "QUOTA"]
        row = next(line.split() for line in table[1:] if "Connections" in line.split())
        assert row[0] == str(os.getuid()) and int(row[3]) >= 1
    finally:
        bus.stop()


def test_stats_by_user_says_dbus_daemon_keeps_no_per_user_ledger(reference_bus):
    result = busdctl(reference_bus.address, "stats", "--by-user")
    assert result.returncode == 1
    assert "per-user accounting" in result.stderr


# ---- the command line itself ----

def test_help_version_and_usage_errors(reference_bus):
    address = reference_bus.address
    help_text, help_verb, version, unknown, bad_option, too_few, bad_json, no_bus = run_all([
        busdctl_command(address, "--help"),
        busdctl_command(address, "help"),
        busdctl_command(address, "--version"),
        busdctl_command(address, "frobnicate"),
        busdctl_command(address, "--frobnicate", "list"),
        busdctl_command(address, "call", "org.example.X"),
        busdctl_command(address, "--json=loud", "list"),
        busdctl_command("unix:path=/nonexistent/bus", "list")])
    assert _ok(help_text) == _ok(help_verb)
    assert "Exit status" in help_text.stdout and "call SERVICE" in help_text.stdout
    assert _ok(version).startswith("busdctl ")
    assert unknown.returncode == 2 and "Unknown command verb 'frobnicate'" in unknown.stderr
    assert bad_option.returncode == 2 and "--frobnicate" in bad_option.stderr
    assert too_few.returncode == 2 and "Usage: busdctl call" in too_few.stderr
    assert bad_json.returncode == 2 and "--json" in bad_json.stderr
    assert no_bus.returncode == 1 and "Failed to connect" in no_bus.stderr


def test_user_bus_comes_from_the_environment(reference_bus):
    """--user (and no command at all, which means list) use DBUS_SESSION_BUS_ADDRESS, as busctl does."""
    result = run([sys.executable, "-m", "busdctl", "--user"], env=reference_bus.client_env())
    assert _ok(result).splitlines()[0].split()[:2] == ["NAME", "PID"]
    assert "org.freedesktop.DBus" in result.stdout


def test_console_script_is_installed(reference_bus):
    command = shutil.which("busdctl")
    if command is None:
        pytest.skip("the busdctl console script is not installed (python3 -m pip install -e .)")
    result = run([command, f"--address={reference_bus.address}", "list", "--acquired", "--no-legend"])
    assert _ok(result).split()[0] == "org.freedesktop.DBus"


def _on_a_terminal(command: list[str], env: dict[str, str]) -> str:
    """What `command` writes when its standard output is a terminal."""
    leader, follower = os.openpty()
    process = subprocess.Popen(command, stdout=follower, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=30) == 0, process.stderr.read()
    return output.decode()


def test_pager_and_colours_only_on_a_terminal(reference_bus):
    command = busdctl_command(reference_bus.address, "list", "--acquired")
    env = dict(reference_bus.client_env(), PAGER="sed s/^/PAGED:/", TERM="xterm")
    env.pop("NO_COLOR", None)
    paged = _on_a_terminal(command, env)
    assert paged.splitlines()[0].startswith("PAGED:\x1b[4mNAME")  # underlined header, through the pager
    plain = _on_a_terminal(command + ["--no-pager"], dict(env, NO_COLOR="1"))
    assert plain.splitlines()[0].startswith("NAME") and "\x1b[" not in plain
    piped = _ok(run(command, env=env))
    assert piped.startswith("NAME") and "\x1b[" not in piped and "PAGED:" not in piped
