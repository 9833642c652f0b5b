"""Live tests of org.freedesktop.DBus, the bus driver: every method, property and error, on busd and dbus-daemon."""

from __future__ import annotations

import os
import re

import pytest

from busclient import DBUS, DBUS_PATH, ERROR_PREFIX, busd_bug, busd_bugs, clients, fresh_clients, shared_bus  # noqa: F401
from busd.wire.marshal import Variant
from busd.wire.message import ERROR, METHOD_RETURN

PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"
MONITORING = "org.freedesktop.DBus.Monitoring"
STATS = "org.freedesktop.DBus.Debug.Stats"
UNIQUE_NAME = re.compile(r"^:1\.[0-9]+$")
ABSENT_UNIQUE = ":1.9999"


def machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        if os.path.exists(path):
            with open(path) as f:
                return f.read().strip()
    pytest.skip("this machine has no machine-id")


# ---------------------------------------------------------------- Hello


def test_hello_assigns_distinct_unique_names_and_announces_them(clients):
    first, second = clients(hello=False), clients()
    reply = first.reply_to(first.call(DBUS, DBUS_PATH, DBUS, "Hello"))
    name = reply.value()
    assert UNIQUE_NAME.match(name) and UNIQUE_NAME.match(second.unique_name)
    assert name != second.unique_name
    # NameAcquired for the unique name is the first thing after the Hello reply, sent to us alone.
    acquired = first.receive()
    assert acquired.is_signal("NameAcquired", DBUS)
    assert acquired.body == [name]
    assert acquired.destination == name
    assert acquired.sender == DBUS and acquired.path == DBUS_PATH
    assert [m.brief() for m in first.drain()] == []


def test_everyone_hears_of_a_unique_name_coming_and_going(clients):
    observer = clients()
    observer.add_match(f"type='signal',sender='{DBUS}',member='NameOwnerChanged'")
    newcomer = clients()
    name = newcomer.unique_name
    about_newcomer = lambda m: m.is_signal("NameOwnerChanged") and m.body[0] == name  # noqa: E731
    assert observer.wait_for(about_newcomer).body == [name, "", name]
    newcomer.close()
    assert observer.wait_for(about_newcomer).body == [name, name, ""]


def test_second_hello_is_refused_and_the_connection_stays(clients):
    client = clients()
    assert client.driver_error("Hello") == ERROR_PREFIX + "Failed"
    assert client.driver_value("GetNameOwner", "s", [client.unique_name]) == client.unique_name


def test_hello_reply_is_addressed_and_stamped_by_the_bus(clients):
    client = clients(hello=False)
    serial = client.call(DBUS, DBUS_PATH, DBUS, "Hello")
    reply = client.reply_to(serial)
    assert reply.type == METHOD_RETURN
    assert reply.sender == DBUS
    assert reply.destination == reply.body[0]


# ---------------------------------------------------------------- names and owners


def test_list_names_has_the_bus_every_unique_name_and_well_known_names(clients):
    one, two = clients(), clients()
    one.request_name("org.example.Listed")
    names = one.driver_value("ListNames")
    assert names[0] == DBUS
    assert {DBUS, one.unique_name, two.unique_name, "org.example.Listed"} <= set(names)
    assert len(names) == len(set(names))


def test_list_activatable_names_without_service_files_is_just_the_bus(clients):
    assert clients().driver_value("ListActivatableNames") == [DBUS]


def test_name_has_owner(clients):
    client = clients()
    client.request_name("org.example.Owned")
    answers = {name: client.driver_value("NameHasOwner", "s", [name])
               for name in (DBUS, client.unique_name, "org.example.Owned", "org.example.Free",
                            ABSENT_UNIQUE, "not..valid")}
    assert answers == {DBUS: True, client.unique_name: True, "org.example.Owned": True,
                       "org.example.Free": False, ABSENT_UNIQUE: False, "not..valid": False}


def test_get_name_owner(clients):
    client = clients()
    client.request_name("org.example.AlsoOwned")
    assert client.driver_value("GetNameOwner", "s", [DBUS]) == DBUS
    assert client.driver_value("GetNameOwner", "s", ["org.example.AlsoOwned"]) == client.unique_name
    assert client.driver_value("GetNameOwner", "s", [client.unique_name]) == client.unique_name
    for absent in ("org.example.Free", ABSENT_UNIQUE, "not..valid"):
        assert client.driver_error("GetNameOwner", "s", [absent]) == ERROR_PREFIX + "NameHasNoOwner"


def test_list_queued_owners_of_special_and_absent_names(clients):
    client = clients()
    assert client.driver_value("ListQueuedOwners", "s", [DBUS]) == [DBUS]
    assert client.driver_value("ListQueuedOwners", "s", [client.unique_name]) == [client.unique_name]
    for absent in ("org.example.Free", ABSENT_UNIQUE, "not..valid"):
        assert client.driver_error("ListQueuedOwners", "s", [absent]) == ERROR_PREFIX + "NameHasNoOwner"


# ---------------------------------------------------------------- activation


def test_start_service_by_name_without_activation_is_service_unknown(clients):
    client = clients()
    client.request_name("org.example.Running")
    # dbus-daemon looks for a .service file first, so even running names are unknown here.
    for name in ("org.example.Nowhere", "org.example.Running", client.unique_name, DBUS):
        assert client.driver_error("StartServiceByName", "su", [name, 0]) == ERROR_PREFIX + "ServiceUnknown"


def test_update_activation_environment_is_accepted_on_a_session_bus(clients):
    client = clients()
    assert client.driver_value("UpdateActivationEnvironment", "a{ss}", [{"BUSD_TEST": "1", "LANG": "C"}]) is None
    assert client.driver_value("UpdateActivationEnvironment", "a{ss}", [{}]) is None


# ---------------------------------------------------------------- credentials


def test_connection_unix_user_and_process_id(clients, shared_bus):
    client = clients()
    other = clients()
    assert client.driver_value("GetConnectionUnixUser", "s", [other.unique_name]) == os.getuid()
    assert client.driver_value("GetConnectionUnixProcessID", "s", [other.unique_name]) == os.getpid()
    # The bus answers for itself too.
    assert client.driver_value("GetConnectionUnixUser", "s", [DBUS]) == os.getuid()
    assert client.driver_value("GetConnectionUnixProcessID", "s", [DBUS]) == shared_bus.process.pid
    other.request_name("org.example.Creds")
    assert client.driver_value("GetConnectionUnixProcessID", "s", ["org.example.Creds"]) == os.getpid()


@pytest.mark.parametrize("method", ["GetConnectionUnixUser", "GetConnectionUnixProcessID",
                                    "GetConnectionCredentials", "GetAdtAuditSessionData",
                                    "GetConnectionSELinuxSecurityContext"])
def test_credential_methods_on_absent_names(clients, method):
    client = clients()
    for absent in (ABSENT_UNIQUE, "org.example.Free"):
        assert client.driver_error(method, "s", [absent]) == ERROR_PREFIX + "NameHasNoOwner"


def test_connection_credentials_of_a_peer(clients):
    client = clients()
    creds = client.driver_value("GetConnectionCredentials", "s", [client.unique_name])
    assert creds["UnixUserID"] == Variant("u", os.getuid())
    assert creds["ProcessID"] == Variant("u", os.getpid())


def test_connection_credentials_include_group_ids(clients):
    client = clients()
    creds = client.driver_value("GetConnectionCredentials", "s", [client.unique_name])
    assert creds["UnixGroupIDs"].signature == "au"
    assert os.getgid() in creds["UnixGroupIDs"].value


def test_connection_credentials_of_the_bus(clients, shared_bus):
    creds = clients().driver_value("GetConnectionCredentials", "s", [DBUS])
    assert creds["UnixUserID"] == Variant("u", os.getuid())
    assert creds["ProcessID"] == Variant("u", shared_bus.process.pid)


def test_audit_and_selinux_data_are_unknown_without_those_systems(clients):
    client = clients()
    assert client.driver_error("GetAdtAuditSessionData", "s", [client.unique_name]) == \
        ERROR_PREFIX + "AdtAuditDataUnknown"
    assert client.driver_error("GetConnectionSELinuxSecurityContext", "s", [client.unique_name]) == \
        ERROR_PREFIX + "SELinuxSecurityContextUnknown"


# ---------------------------------------------------------------- match rules, id, reload


def test_add_and_remove_match(clients):
    client = clients()
    rule = "type='signal',interface='org.example.Iface'"
    assert client.driver_value("AddMatch", "s", [rule]) is None
    assert client.driver_value("RemoveMatch", "s", [rule]) is None
    assert client.driver_error("RemoveMatch", "s", [rule]) == ERROR_PREFIX + "MatchRuleNotFound"
    assert client.driver_error("AddMatch", "s", ["type='bogus'"]) == ERROR_PREFIX + "MatchRuleInvalid"
    assert client.driver_error("RemoveMatch", "s", ["type='bogus'"]) == ERROR_PREFIX + "MatchRuleInvalid"


def test_an_overlong_match_rule_exceeds_limits(clients):
    client = clients()
    rule = "interface='org.example." + "x" * 1100 + "'"
    assert client.driver_error("AddMatch", "s", [rule]) == ERROR_PREFIX + "LimitsExceeded"


def test_get_id_is_one_uuid_for_the_whole_bus(clients):
    # Not necessarily the address's guid: the spec gives each listening address its own.
    first, second = clients(), clients()
    bus_id = first.driver_value("GetId")
    assert re.fullmatch(r"[0-9a-f]{32}", bus_id)
    assert second.driver_value("GetId") == bus_id == first.driver_value("GetId")


def test_reload_config_keeps_connections(clients):
    client = clients()
    client.request_name("org.example.Kept")
    assert client.driver_value("ReloadConfig") is None
    assert client.driver_value("GetNameOwner", "s", ["org.example.Kept"]) == client.unique_name


# ---------------------------------------------------------------- dispatch errors


def test_unknown_method_interface_and_wrong_signature(clients):
    client = clients()
    assert client.driver_error("NoSuchMethod") == ERROR_PREFIX + "UnknownMethod"
    assert client.driver_error("GetId", interface="org.example.NoSuchInterface") == ERROR_PREFIX + "UnknownInterface"
    assert client.driver_error("GetId", "s", ["unexpected"]) == ERROR_PREFIX + "InvalidArgs"
    assert client.driver_error("RequestName", "s", ["org.example.Short"]) == ERROR_PREFIX + "InvalidArgs"


def test_methods_without_interface_are_found_by_member(clients):
    client = clients()
    assert client.call_wait(DBUS, DBUS_PATH, None, "GetId").value() == client.driver_value("GetId")
    assert client.call_wait(DBUS, DBUS_PATH, None, "Ping").type == METHOD_RETURN


def test_the_bus_interface_answers_at_every_path_but_the_rest_only_at_its_own(clients):
    client = clients()
    assert client.driver_value("GetId") == client.call_driver("GetId", path="/somewhere/else").value()
    for iface, member, sig, body in ((PROPERTIES, "GetAll", "s", [DBUS]),
                                     (MONITORING, "BecomeMonitor", "asu", [[], 0]),
                                     (STATS, "GetStats", "", [])):
        assert client.driver_error(member, sig, body, interface=iface, path="/elsewhere") == \
            ERROR_PREFIX + "UnknownInterface"


def test_no_reply_expected_call_to_the_bus_is_obeyed(clients):
    client = clients()
    client.call(DBUS, DBUS_PATH, DBUS, "RequestName", "su", ["org.example.Quiet", 0], flags=0x1)
    # The name is taken. Whether a reply comes anyway is up to the bus: the spec says it
    # "should be omitted"; busd omits it, dbus-daemon sends it.
    messages = client.drain()
    assert ("signal", "NameAcquired", "org.example.Quiet") in [m.brief() for m in messages]
    assert [m.brief() for m in messages if m.type == ERROR] == []


# ---------------------------------------------------------------- Peer, Introspectable, Properties


def test_peer_interface(clients):
    client = clients()
    assert client.call_driver("Ping", interface=PEER, path="/").type == METHOD_RETURN
    assert client.call_driver("GetMachineId", interface=PEER).value() == machine_id()


def test_introspection_of_the_bus_object(clients):
    xml = clients().call_driver("Introspect", interface=INTROSPECTABLE).value()
    assert xml.startswith("<!DOCTYPE node PUBLIC")
    interfaces = re.findall(r'<interface name="([^"]+)">', xml)
    assert set(interfaces) == {DBUS, PROPERTIES, INTROSPECTABLE, MONITORING, STATS, PEER}
    methods = set(re.findall(r'<method name="([^"]+)">', xml))
    assert {"Hello", "RequestName", "ReleaseName", "StartServiceByName", "UpdateActivationEnvironment",
            "NameHasOwner", "ListNames", "ListActivatableNames", "AddMatch", "RemoveMatch", "GetNameOwner",
            "ListQueuedOwners", "GetConnectionUnixUser", "GetConnectionUnixProcessID", "GetAdtAuditSessionData",
            "GetConnectionSELinuxSecurityContext", "ReloadConfig", "GetId", "GetConnectionCredentials",
            "Get", "GetAll", "Set", "Introspect", "BecomeMonitor", "GetStats", "GetConnectionStats",
            "GetAllMatchRules", "Ping", "GetMachineId"} <= methods
    assert {"NameOwnerChanged", "NameLost", "NameAcquired"} <= set(re.findall(r'<signal name="([^"]+)">', xml))


@pytest.mark.parametrize("path, children", [("/", ["org/freedesktop/DBus"]), ("/org/freedesktop", ["DBus"]),
                                            ("/org/example", [])])
def test_introspection_elsewhere_shows_the_common_interfaces_and_the_way_to_the_bus(clients, path, children):
    xml = clients().call_driver("Introspect", interface=INTROSPECTABLE, path=path).value()
    assert re.findall(r'<interface name="([^"]+)">', xml) == [DBUS, INTROSPECTABLE, PEER]
    assert re.findall(r'<node name="([^"]+)"', xml) == children


def test_properties(clients):
    client = clients()
    features = client.call_driver("Get", "ss", [DBUS, "Features"], interface=PROPERTIES).value()
    assert features.signature == "as" and "HeaderFiltering" in features.value
    interfaces = client.call_driver("Get", "ss", [DBUS, "Interfaces"], interface=PROPERTIES).value()
    assert interfaces == Variant("as", [MONITORING, STATS])
    everything = client.call_driver("GetAll", "s", [DBUS], interface=PROPERTIES).value()
    assert everything == {"Features": features, "Interfaces": interfaces}


@pytest.mark.parametrize("member, sig, body, error", [
    ("Get", "ss", [DBUS, "NoSuchProperty"], "UnknownProperty"),
    ("Get", "ss", ["org.example.Nope", "Features"], "UnknownInterface"),
    ("GetAll", "s", ["org.example.Nope"], "UnknownInterface"),
    ("GetAll", "s", [""], "UnknownInterface"),
    ("Set", "ssv", [DBUS, "Features", Variant("as", [])], "PropertyReadOnly"),
    ("Set", "ssv", [DBUS, "NoSuchProperty", Variant("s", "")], "UnknownProperty"),
])
def test_property_errors(clients, member, sig, body, error):
    assert clients().driver_error(member, sig, body, interface=PROPERTIES) == ERROR_PREFIX + error


# ---------------------------------------------------------------- Debug.Stats

COMMON_BUS_STATS = {"Serial", "ActiveConnections", "IncompleteConnections", "MatchRules",
                    "PeakMatchRulesPerConnection", "BusNames"}
COMMON_CONNECTION_STATS = {"Serial", "UniqueName", "MatchRules", "PeakMatchRules", "IncomingBytes",
                           "IncomingFDs", "OutgoingBytes", "OutgoingFDs", "PeakIncomingBytes", "PeakOutgoingBytes"}


def test_get_stats(fresh_clients):
    client = fresh_clients()
    fresh_clients()
    client.add_match("type='signal',member='Counted'")
    stats = client.call_driver("GetStats", interface=STATS).value()
    assert COMMON_BUS_STATS <= set(stats)
    assert all(isinstance(v, Variant) for v in stats.values())
    assert stats["ActiveConnections"] == Variant("u", 2)
    assert stats["IncompleteConnections"] == Variant("u", 0)
    assert stats["MatchRules"] == Variant("u", 1)


def test_get_connection_stats(clients):
    client = clients()
    client.add_match("type='signal',member='Counted'")
    client.add_match("type='signal',member='AlsoCounted'")
    stats = client.call_driver("GetConnectionStats", "s", [client.unique_name], interface=STATS).value()
    assert COMMON_CONNECTION_STATS <= set(stats)
    assert stats["UniqueName"] == Variant("s", client.unique_name)
    assert stats["MatchRules"] == Variant("u", 2)
    assert stats["PeakMatchRules"] == Variant("u", 2)
    client.request_name("org.example.Stats")
    by_name = client.call_driver("GetConnectionStats", "s", ["org.example.Stats"], interface=STATS).value()
    assert by_name["UniqueName"] == Variant("s", client.unique_name)


def test_get_connection_stats_errors(clients):
    client = clients()
    assert client.driver_error("GetConnectionStats", "s", [ABSENT_UNIQUE], interface=STATS) == \
        ERROR_PREFIX + "NameHasNoOwner"
    assert client.driver_error("GetConnectionStats", "s", [DBUS], interface=STATS) == ERROR_PREFIX + "InvalidArgs"


def test_get_all_match_rules(clients):
    watcher, idle = clients(), clients()
    watcher.add_match("type='signal',interface='org.example.Watched'")
    watcher.add_match("type='signal',interface='org.example.Watched'")
    rules = watcher.call_driver("GetAllMatchRules", interface=STATS).value()
    # Every connection is listed, with one entry per AddMatch, in dbus-daemon's canonical text.
    assert rules[idle.unique_name] == []
    assert rules[watcher.unique_name] == ["type='signal',interface='org.example.Watched'"] * 2
