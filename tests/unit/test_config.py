"""The dbus-daemon XML configuration loader: elements, includes, overrides, limits, policies, errors."""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path

import dataclasses
import pytest

from busd.config.builtin import builtin_session_config, builtin_system_config
from busd.config.errors import ConfigError
from busd.config.loader import load_config, load_config_text
from busd.config.model import INT_LIMITS, LIMIT_NAMES, MAX_MESSAGE_UNIX_FDS, SESSION_LIMITS, LimitSettings, ServiceDir
from busd.config.servicedirs import standard_session_servicedirs, standard_system_servicedirs

STOCK_SESSION = Path("/usr/share/dbus-1/session.conf")
STOCK_SYSTEM = Path("/usr/share/dbus-1/system.conf")
BUILTIN_SESSION = Path(__file__).resolve().parents[2] / "busd" / "config" / "session.conf"
LISTEN = "unix:path=/tmp/busd-test-socket"


def config_with(body: str) -> str:
    """A minimal valid config whose body starts on line 3."""
    return f"<busconfig>\n<listen>{LISTEN}</listen>\n{body}\n</busconfig>\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path




# -- stock and built-in files ------------------------------------------------------------------------

needs_stock = pytest.mark.skipif(not STOCK_SYSTEM.exists(), reason="dbus-daemon's stock config is not installed")


@needs_stock
def test_stock_session_conf_loads():
    config = load_config(STOCK_SESSION)
    assert config.type == "session"
    assert config.listen == ("unix:tmpdir=/tmp",)
    assert config.auth == ("EXTERNAL",)
    assert config.keep_umask and not config.fork
    assert config.servicedirs == tuple(standard_session_servicedirs())
    assert config.limits == SESSION_LIMITS
    (policy,) = config.policies
    assert policy.context == "default"
    assert [(rule.kind, rule.allow, rule.eavesdrop) for rule in policy.rules] == [
        ("send", True, True), ("receive", True, True), ("own", True, False)]
    assert config.files[0] == str(STOCK_SESSION)


def _commented_limits(path: Path) -> dict[str, int]:
    """The limits dbus-daemon's system.conf documents, commented out, as its built-in defaults."""
    return {name: int(value) for name, value in
            re.findall(r'<!-- <limit name="(\w+)">(\d+)</limit> -->', path.read_text())}


@needs_stock
def test_stock_system_conf_loads_with_its_includedirs():
    config = load_config(STOCK_SYSTEM)
    assert (config.type, config.user, config.fork, config.syslog) == ("system", "messagebus", True, True)
    assert config.pidfile == "/run/dbus/pid"
    assert config.servicehelper == "/usr/lib/dbus-1.0/dbus-daemon-launch-helper"
    assert config.listen == ("unix:path=/run/dbus/system_bus_socket",)
    assert config.servicedirs == tuple(standard_system_servicedirs())
    system_d = STOCK_SYSTEM.parent / "system.d"
    included = sorted(str(system_d / name) for name in os.listdir(system_d) if name.endswith(".conf"))
    assert [f for f in config.files if f.startswith(str(system_d))] == included
    assert str(system_d) in config.includedirs
    assert {policy.file for policy in config.policies} <= set(config.files)
    default = config.policies[0]
    assert (default.context, default.file) == ("default", str(STOCK_SYSTEM))
    assert [(rule.kind, rule.allow) for rule in default.rules[:4]] == [
        ("user", True), ("own", False), ("send", False), ("send", True)]
    assert default.rules[2].send_type == "method_call"
    commented = _commented_limits(STOCK_SYSTEM)
    assert commented and {name: getattr(config.limits, name) for name in commented} == commented


def test_builtin_session_config_is_the_stock_one_without_includes():
    config = builtin_session_config()
    assert config.type == "session"
    assert config.listen == ("unix:tmpdir=/tmp",)
    assert config.auth == ("EXTERNAL",)
    assert config.servicedirs == tuple(standard_session_servicedirs())
    # Queues and messages are bounded at 128 MiB instead of the stock 1e9 bytes.
    bounded = {"max_incoming_bytes": 1 << 27, "max_outgoing_bytes": 1 << 27, "max_message_size": 1 << 27}
    assert config.limits == dataclasses.replace(SESSION_LIMITS, **bounded)
    assert config.files == (str(BUILTIN_SESSION),) and config.includedirs == () and config.notes == ()
    if STOCK_SESSION.exists():
        ignore = {"files", "includedirs", "notes", "policies", "limits"}
        assert _fields(config, ignore) == _fields(load_config(STOCK_SESSION), ignore)
        ours, stock = config.policies[0], load_config(STOCK_SESSION).policies[0]
        assert [_fields(r, {"file", "line"}) for r in ours.rules] == [_fields(r, {"file", "line"}) for r in stock.rules]


def _fields(model: object, exclude: set[str]) -> dict:
    return {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in exclude}




def test_builtin_system_config():
    config = builtin_system_config()
    assert (config.type, config.user, config.fork) == ("system", "messagebus", True)
    assert config.limits == LimitSettings()
    assert "/usr/share/dbus-1/system.d" in config.includedirs or not os.path.isdir("/usr/share/dbus-1/system.d")
    default = config.rules("default")
    assert [(rule.kind, rule.allow) for rule in default[:3]] == [("user", True), ("own", False), ("send", False)]


# -- every element -------------------------------------------------------------------------------------

def test_every_element(tmp_path):
    text = config_with("""
  <type>session</type>
  <user>nobody</user>
  <fork/>
  <keep_umask/>
  <syslog/>
  <allow_anonymous/>
  <pidfile>/run/busd.pid</pidfile>
  <listen>tcp:host=localhost,port=0</listen>
  <auth>EXTERNAL</auth>
  <auth>ANONYMOUS</auth>
  <servicedir>services</servicedir>
  <servicedir>/abs/services</servicedir>
  <servicehelper>helper</servicehelper>
  <standard_system_servicedirs/>
  <limit name="max_message_size">4096</limit>
  <policy context="mandatory"><deny own="org.example.Forbidden"/></policy>
  <apparmor mode="disabled"/>
  <selinux><associate own="org.example.Svc" context="svc_t"/></selinux>
""")
    config = load_config(write(tmp_path / "bus.conf", text))
    assert config.type == "session"
    assert config.user == "nobody"
    assert config.fork and config.keep_umask and config.syslog and config.allow_anonymous
    assert config.pidfile == "/run/busd.pid"
    assert config.listen == (LISTEN, "tcp:host=localhost,port=0")
    assert config.auth == ("EXTERNAL", "ANONYMOUS")
    assert [d.path for d in config.servicedirs] == [
        str(tmp_path / "services"), "/abs/services", *[d.path for d in standard_system_servicedirs()]]
    assert config.servicehelper == str(tmp_path / "helper")
    assert config.limits.max_message_size == 4096
    (policy,) = config.policies
    assert policy.applies_to == "mandatory"
    assert policy.rules[0].own == "org.example.Forbidden" and not policy.rules[0].allow
    assert config.apparmor_mode == "disabled"
    assert config.selinux[0].own == "org.example.Svc" and config.selinux[0].context == "svc_t"
    notes = [str(note) for note in config.notes]
    assert any("AppArmor" in note for note in notes) and any("SELinux" in note for note in notes)
    assert all(note.startswith(str(tmp_path / "bus.conf") + ":") for note in notes)


def test_models_are_frozen():
    config = load_config_text(config_with("<type>session</type>"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.type = "system"


# -- includes --------------------------------------------------------------------------------------------

def test_relative_includes_resolve_against_the_including_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    main = write(tmp_path / "etc" / "main.conf", config_with("<include>sub/first.conf</include>"))
    write(tmp_path / "etc" / "sub" / "first.conf",
          "<busconfig><listen>first</listen><include>deeper/second.conf</include></busconfig>")
    second = write(tmp_path / "etc" / "sub" / "deeper" / "second.conf", "<busconfig><listen>second</listen></busconfig>")
    config = load_config(main)
    assert config.listen == (LISTEN, "first", "second")
    assert config.files == (str(main), str(tmp_path / "etc" / "sub" / "first.conf"), str(second))


def test_load_config_text_resolves_includes_against_base_dir(tmp_path):
    write(tmp_path / "extra.conf", "<busconfig><type>custom</type></busconfig>")
    assert load_config_text(config_with("<include>extra.conf</include>"), base_dir=tmp_path).type == "custom"


def test_missing_includes(tmp_path):
    assert load_config_text(config_with('<include ignore_missing="yes">nope.conf</include>'),
                            base_dir=tmp_path).listen == (LISTEN,)
    main = write(tmp_path / "main.conf", config_with("<include>nope.conf</include>"))
    with pytest.raises(ConfigError) as info:
        load_config(main)
    assert str(info.value) == f'{main}:3: Failed to open "{tmp_path / "nope.conf"}": No such file or directory'


def test_errors_in_included_files_name_that_file(tmp_path):
    write(tmp_path / "bad.conf", "<busconfig>\n\n<bogus/>\n</busconfig>")
    for attributes in ("", ' ignore_missing="yes"'):
        main = write(tmp_path / "main.conf", config_with(f"<include{attributes}>bad.conf</include>"))
        with pytest.raises(ConfigError) as info:
            load_config(main)
        assert (info.value.file, info.value.line) == (str(tmp_path / "bad.conf"), 3)
        assert "Element <bogus> not allowed inside <busconfig>" in info.value.reason


def test_circular_include(tmp_path):
    main = write(tmp_path / "main.conf", config_with("<include>loop.conf</include>"))
    write(tmp_path / "loop.conf", "<busconfig>\n<include>main.conf</include></busconfig>")
    with pytest.raises(ConfigError) as info:
        load_config(main)
    assert (info.value.file, info.value.line) == (str(tmp_path / "loop.conf"), 2)
    assert "Circular inclusion of file" in info.value.reason


def test_selinux_includes(tmp_path):
    config = load_config_text(config_with(
        '<include if_selinux_enabled="yes" selinux_root_relative="yes">contexts/dbus_contexts</include>'))
    assert config.files == ()
    with pytest.raises(ConfigError, match="no SELinux support"):
        load_config_text(config_with('<include selinux_root_relative="yes">contexts/x</include>'))


def test_includedir(tmp_path):
    conf_d = tmp_path / "conf.d"
    for name in ("c.conf", "a.conf", "b.conf"):
        write(conf_d / name, f"<busconfig><listen>{name}</listen></busconfig>")
    write(conf_d / "notes.txt", "<busconfig><listen>txt</listen></busconfig>")
    (conf_d / "dir.conf").mkdir()
    write(conf_d / "broken.conf", "<busconfig><listen>partial</listen>\n<bogus/></busconfig>")
    main = write(tmp_path / "main.conf", config_with("<includedir>conf.d</includedir>\n"
                                                      "<includedir>missing.d</includedir>"))
    config = load_config(main)
    assert config.listen == (LISTEN, "a.conf", "b.conf", "c.conf")  # sorted; the broken file left out whole
    assert config.includedirs == (str(conf_d),)
    (note,) = config.notes
    assert (note.file, note.line) == (str(main), 3)
    assert f"{conf_d / 'broken.conf'}:2: Element <bogus>" in note.message


def test_includedir_must_be_a_directory(tmp_path):
    write(tmp_path / "file.conf", "<busconfig/>")
    with pytest.raises(ConfigError, match="Failed to read directory"):
        load_config_text(config_with(f"<includedir>{tmp_path / 'file.conf'}</includedir>"))


def test_listen_may_come_from_an_include_but_is_required(tmp_path):
    write(tmp_path / "listen.conf", "<busconfig><listen>included</listen></busconfig>")
    assert load_config_text("<busconfig><include>listen.conf</include></busconfig>",
                            base_dir=tmp_path).listen == ("included",)
    main = write(tmp_path / "main.conf", "\n<busconfig>\n<type>session</type>\n</busconfig>\n")
    with pytest.raises(ConfigError) as info:
        load_config(main)
    assert str(info.value) == f"{main}:2: Configuration file needs one or more <listen> elements giving addresses"


# -- override order -------------------------------------------------------------------------------------

def test_later_elements_override_earlier_ones(tmp_path):
    write(tmp_path / "inc.conf", """<busconfig>
  <type>from-include</type>
  <user>include-user</user>
  <pidfile>/include.pid</pidfile>
  <servicehelper>include-helper</servicehelper>
  <listen>include-listen</listen>
  <auth>DBUS_COOKIE_SHA1</auth>
  <fork/>
  <keep_umask/>
  <allow_anonymous/>
  <syslog/>
  <servicedir>/srv/a</servicedir>
  <limit name="max_names_per_connection">7</limit>
  <limit name="auth_timeout">9</limit>
  <policy context="default"><allow own="from.include"/></policy>
</busconfig>""")
    main = write(tmp_path / "main.conf", config_with("""
  <type>first</type>
  <user>first-user</user>
  <limit name="auth_timeout">1</limit>
  <limit name="max_replies_per_connection">2</limit>
  <servicedir>/srv/a</servicedir>
  <policy context="default"><allow own="before.include"/></policy>
  <include>inc.conf</include>
  <policy context="default"><allow own="after.include"/></policy>
  <user>last-user</user>
  <limit name="max_names_per_connection">8</limit>
  <listen>last-listen</listen>
"""))
    config = load_config(main)
    assert config.type == "from-include"
    assert config.user == "last-user"
    assert config.pidfile == "/include.pid"
    assert config.servicehelper == str(tmp_path / "include-helper")
    assert config.listen == (LISTEN, "include-listen", "last-listen")
    assert config.auth == ("DBUS_COOKIE_SHA1",)
    assert config.fork and config.keep_umask and config.allow_anonymous
    assert not config.syslog  # dbus-daemon does not carry <syslog/> out of an included file
    assert [d.path for d in config.servicedirs] == ["/srv/a"]
    assert (config.limits.auth_timeout, config.limits.max_replies_per_connection,
            config.limits.max_names_per_connection) == (9, 2, 8)
    assert [policy.rules[0].own for policy in config.policies] == ["before.include", "from.include", "after.include"]


def test_last_type_wins():
    assert load_config_text(config_with("<type>a</type><type>b</type>")).type == "b"


# -- limits -----------------------------------------------------------------------------------------------

def test_every_limit_can_be_set():
    body = "\n".join(f'<limit name="{name}">{i + 1}</limit>' for i, name in enumerate(LIMIT_NAMES))
    limits = load_config_text(config_with(body)).limits
    assert list(limits.as_dict().values()) == list(range(1, len(LIMIT_NAMES) + 1))


def test_limit_defaults_are_dbus_daemons():
    assert load_config_text(config_with("")).limits == LimitSettings()
    assert LimitSettings().reply_timeout == -1
    if STOCK_SESSION.exists():
        assert load_config(STOCK_SESSION).limits == SESSION_LIMITS


def test_long_limits_may_exceed_a_c_int():
    assert "max_message_size" not in INT_LIMITS
    limits = load_config_text(config_with('<limit name="max_message_size">3000000000</limit>')).limits
    assert limits.max_message_size == 3_000_000_000


# -- policies ------------------------------------------------------------------------------------------

def rule_from(attributes: str, element: str = "allow"):
    config = load_config_text(config_with(f'<policy context="default"><{element} {attributes}/></policy>'),
                              filename="rules.conf")
    (policy,) = config.policies
    (rule,) = policy.rules
    assert (rule.file, rule.line) == ("rules.conf", 3)
    return rule


@pytest.mark.parametrize("attributes, expected", [
    ('send_interface="org.example.I"', {"kind": "send", "send_interface": "org.example.I"}),
    ('send_interface="*"', {"kind": "send", "send_interface": None}),
    ('send_member="Do" send_interface="org.example.I"', {"send_member": "Do", "send_interface": "org.example.I"}),
    ('send_member="Do" send_path="/x"', {"send_member": "Do", "send_path": "/x"}),
    ('send_error="org.example.Error"', {"kind": "send", "send_error": "org.example.Error"}),
    ('send_destination="org.example.Svc"', {"send_destination": "org.example.Svc"}),
    ('send_destination="*"', {"kind": "send", "send_destination": None}),
    ('send_destination_prefix="org.example"', {"send_destination_prefix": "org.example"}),
    ('send_path="/org/example"', {"send_path": "/org/example"}),
    ('send_type="signal"', {"send_type": "signal"}),
    ('send_type="*"', {"kind": "send", "send_type": None}),
    ('send_broadcast="true"', {"send_broadcast": True}),
    ('send_broadcast="false"', {"send_broadcast": False}),
    ('send_requested_reply="false"', {"send_requested_reply": False, "requested_reply": False}),
    ('send_type="error"', {"send_requested_reply": None, "requested_reply": True}),
    ('receive_interface="org.example.I"', {"kind": "receive", "receive_interface": "org.example.I"}),
    ('receive_member="Do" receive_interface="a.b"', {"receive_member": "Do"}),
    ('receive_error="org.example.Error"', {"receive_error": "org.example.Error"}),
    ('receive_sender="org.example.Svc"', {"kind": "receive", "receive_sender": "org.example.Svc"}),
    ('receive_sender="*"', {"kind": "receive", "receive_sender": None}),
    ('receive_path="/p"', {"receive_path": "/p"}),
    ('receive_type="method_call"', {"receive_type": "method_call"}),
    ('receive_requested_reply="false"', {"receive_requested_reply": False, "requested_reply": False}),
    ('eavesdrop="true"', {"kind": "receive", "eavesdrop": True}),
    ('eavesdrop="true" send_destination="*"', {"kind": "send", "eavesdrop": True}),
    ('send_type="signal" max_fds="0"', {"max_fds": 0, "min_fds": 0}),
    ('receive_type="signal" min_fds="1"', {"min_fds": 1, "max_fds": MAX_MESSAGE_UNIX_FDS}),
    ('own="org.example.Svc"', {"kind": "own", "own": "org.example.Svc", "own_prefix": None}),
    ('own="*"', {"kind": "own", "own": None}),
    ('own_prefix="org.example"', {"kind": "own", "own_prefix": "org.example", "own": None}),
    ('user="root"', {"kind": "user", "user": "root", "uid": 0}),
    ('user="0"', {"kind": "user", "uid": 0}),
    ('user="*"', {"kind": "user", "user": None, "uid": None}),
    ('group="root"', {"kind": "group", "group": "root", "gid": 0}),
    ('group="*"', {"kind": "group", "gid": None}),
    ('send_type="signal" log="true"', {"log": True}),
    ('own="a.b" log="true"', {"log": False}),  # dbus-daemon only logs send rules
])
def test_rule_attributes(attributes, expected):
    rule = rule_from(attributes)
    assert rule.allow
    assert {key: getattr(rule, key) for key in expected} == expected


def test_deny_rules_default_to_unrequested_replies():
    rule = rule_from('send_type="method_return"', element="deny")
    assert not rule.allow and rule.requested_reply is False


def test_policy_kinds_and_rule_order():
    config = load_config_text(config_with("""
<policy context="default"><allow own="a.first"/><deny own="a.second"/></policy>
<policy context="mandatory"><deny send_destination="a.b"/></policy>
<policy user="root"><allow own="a.root"/></policy>
<policy user="0"><allow own="a.zero"/></policy>
<policy group="root"><allow own="a.group"/></policy>
<policy at_console="true"><allow own="a.console"/></policy>
<policy at_console="false"><allow user="*"/></policy>
"""))
    assert [(p.applies_to, p.uid, p.gid, p.at_console) for p in config.policies] == [
        ("default", None, None, None), ("mandatory", None, None, None), ("user", 0, None, None),
        ("user", 0, None, None), ("group", None, 0, None), ("console", None, None, True),
        ("console", None, None, False)]
    assert [(r.own, r.allow) for r in config.rules("default")] == [("a.first", True), ("a.second", False)]
    assert [p.line for p in config.policies] == [4, 5, 6, 7, 8, 9, 10]


def test_unknown_users_and_groups_are_ignored_with_a_note():
    missing = "busd-no-such-user"
    with pytest.raises(KeyError):
        pwd.getpwnam(missing)
    config = load_config_text(config_with(f"""<policy user="{missing}"><allow own="*"/></policy>
<policy group="{missing}"><allow own="*"/></policy>
<policy context="default"><allow user="{missing}"/><allow group="{missing}"/><allow own="kept.name"/></policy>"""))
    (policy,) = config.policies
    assert [rule.own for rule in policy.rules] == ["kept.name"]
    assert [(note.line, missing in note.message) for note in config.notes] == [
        (3, True), (4, True), (5, True), (5, True)]


# -- errors -----------------------------------------------------------------------------------------------









def test_root_element_and_xml_errors(tmp_path):
    cases = [
        ("<notbusconfig/>", 1, "Unknown element <notbusconfig> at root of configuration file"),
        ('<busconfig bad="1"><listen>x</listen></busconfig>', 1, 'Attribute "bad" is invalid on <busconfig>'),
        (f"<busconfig>\n<listen>{LISTEN}</listen>text</busconfig>", 2, "No text content expected inside XML element"),
        (f"<busconfig>\n<listen>{LISTEN}</listen>\n<type>x</busconfig>", 3, "not well-formed XML: mismatched tag"),
        ("", 1, "not well-formed XML: no element found"),
    ]
    for text, line, reason in cases:
        path = write(tmp_path / "bus.conf", text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert (info.value.line, reason in info.value.reason) == (line, True), str(info.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError) as missing:
        load_config("/nonexistent/busd.conf")
    assert str(missing.value) == "/nonexistent/busd.conf: no such configuration file"
    with pytest.raises(ConfigError) as directory:
        load_config(tmp_path)
    assert str(directory.value) == f"{tmp_path}: cannot read the configuration file: Is a directory"




# -- XML namespaces: busd's extensions, foreign elements ------------------------------------------------------

def test_busd_namespace_elements_are_kept_and_foreign_ones_ignored():
    config = load_config_text(f"""<busconfig xmlns:busd="https://busd.dev/config" xmlns:x="urn:example">
<listen>{LISTEN}</listen>
<busd:bridge name="upstream">
  <busd:peer address="unix:path=/run/other">text</busd:peer>
</busd:bridge>
<x:thing><policy/></x:thing>
<policy context="default"><busd:hint/><allow own="*" x:why="because"/></policy>
</busconfig>""")
    (bridge,) = config.extensions
    assert (bridge.name, bridge.attributes, bridge.line) == ("bridge", {"name": "upstream"}, 3)
    (peer,) = bridge.children
    assert (peer.name, peer.attributes, peer.text) == ("peer", {"address": "unix:path=/run/other"}, "text")
    assert [(note.line, note.message.split(" in XML namespace ")[0]) for note in config.notes] == [
        (6, "ignored element <thing>"), (7, "ignored element <hint>"), (7, "ignored attribute why")]
    assert config.policies[0].rules[0].kind == "own"


# -- service directories --------------------------------------------------------------------------------------

def test_standard_session_servicedirs_follow_the_xdg_variables():
    dirs = standard_session_servicedirs({"XDG_RUNTIME_DIR": "/run/user/5", "XDG_DATA_HOME": "/home/u/data",
                                         "XDG_DATA_DIRS": "/opt/share:/usr/share:"})
    assert dirs == [ServiceDir(path="/run/user/5/dbus-1/services", transient=True),
                    ServiceDir(path="/home/u/data/dbus-1/services"),
                    ServiceDir(path="/opt/share/dbus-1/services"),
                    ServiceDir(path="/usr/share/dbus-1/services")]


def test_standard_session_servicedirs_defaults():
    home = pwd.getpwuid(os.getuid()).pw_dir
    assert [d.path for d in standard_session_servicedirs({})] == [
        f"{home}/.local/share/dbus-1/services", "/usr/local/share/dbus-1/services", "/usr/share/dbus-1/services"]


def test_standard_system_servicedirs():
    assert [d.path for d in standard_system_servicedirs()] == [
        "/usr/local/share/dbus-1/system-services", "/usr/share/dbus-1/system-services",
        "/lib/dbus-1/system-services"]


def test_servicedirs_in_a_config_are_deduplicated_in_order(monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/5")
    monkeypatch.setenv("XDG_DATA_HOME", "/data")
    monkeypatch.delenv("XDG_DATA_DIRS", raising=False)
    config = load_config_text(config_with("<servicedir>/data/dbus-1/services</servicedir>\n"
                                          "<standard_session_servicedirs/>\n"
                                          "<servicedir>/run/user/5/dbus-1/services</servicedir>"))
    assert [(d.path, d.transient) for d in config.servicedirs] == [
        ("/data/dbus-1/services", False),
        ("/run/user/5/dbus-1/services", False),  # also listed plainly: watched, as dbus-daemon does
        ("/usr/local/share/dbus-1/services", False),
        ("/usr/share/dbus-1/services", False)]
