"""Configurations checked against dbus-daemon: it refuses what busd refuses and accepts what busd accepts."""

from __future__ import annotations

import pytest
import subprocess
import sys
from busd.config.errors import ConfigError
from busd.config.loader import load_config, load_config_text
from buses import start_bus
from busd.config.model import MAX_MESSAGE_UNIX_FDS
from test_config import BUILTIN_SESSION, LISTEN, config_with, write


INVALID = [
    ("<bogus/>", "Element <bogus> not allowed inside <busconfig> in configuration file"),
    ("<busconfig/>", "Element <busconfig> not allowed inside <busconfig>"),
    ('<policy context="default"><bogus/></policy>', "Element <bogus> not allowed inside <policy>"),
    ("<listen>x<bogus/></listen>", "Element <bogus> is not allowed in this context"),
    ('<policy context="default"><allow own="*"><deny own="*"/></allow></policy>',
     "Element <deny> is not allowed in this context"),
    ('<user a="b">x</user>', 'Attribute "a" is invalid on <user> element in this context'),
    ('<standard_session_servicedirs x="1"/>', 'Attribute "x" is invalid'),
    ('<include bogus="1">x.conf</include>', 'Attribute "bogus" is invalid on <include>'),
    ("<fork>x</fork>", "No text content expected inside XML element fork"),
    ('<policy context="default">text</policy>', "No text content expected inside XML element policy"),
    ("<listen></listen>", "XML element <listen> was expected to have content inside it"),
    ("<limit>5</limit>", '<limit> element must have a "name" attribute'),
    ('<limit name="bogus">5</limit>', 'There is no limit called "bogus"'),
    ('<limit name="max_message_size">abc</limit>', "could not parse as integer"),
    ('<limit name="max_message_size">-1</limit>', '<limit name="max_message_size"> must be a positive number'),
    ('<limit name="max_names_per_connection">3000000000</limit>', "value is too large"),
    ("<include>/nonexistent/busd.conf</include>", 'Failed to open "/nonexistent/busd.conf"'),
    ('<include ignore_missing="maybe">x.conf</include>', 'ignore_missing attribute must have value "yes" or "no"'),
    ("<policy></policy>", "<policy> element must have exactly one of (context|user|group|at_console)"),
    ('<policy context="default" user="root"></policy>', "exactly one of"),
    ('<policy context="other"></policy>', 'must have the value "default" or "mandatory", not "other"'),
    ('<policy at_console="maybe"></policy>', 'Unknown value "maybe" for at_console'),
    ('<policy context="default"><allow/></policy>', "Element <allow> must have one or more attributes"),
    ('<policy context="default"><deny log="true"/></policy>', "Element <deny> must have one or more attributes"),
    ('<policy context="default"><allow max_fds="1"/></policy>', "must have one or more attributes"),
    ('<policy context="default"><allow bogus="1"/></policy>', 'Attribute "bogus" is invalid on <allow>'),
    ('<policy context="default"><allow send_member="Foo"/></policy>', "if you specify a member"),
    ('<policy context="default"><allow receive_member="Foo"/></policy>', "if you specify a member"),
    ('<policy context="default"><allow own="a" own_prefix="b"/></policy>', "cannot be combined"),
    ('<policy context="default"><allow eavesdrop="true" own="x"/></policy>', "cannot be combined"),
    ('<policy context="default"><allow user="*" group="*"/></policy>', "cannot be combined"),
    ('<policy context="default"><allow send_interface="a.b" receive_sender="c"/></policy>',
     "send and receive attributes cannot be combined"),
    ('<policy context="default"><allow send_error="a.E" send_interface="a.b"/></policy>',
     "send_error cannot be combined with send_member or send_interface"),
    ('<policy context="default"><allow send_destination="a" send_destination_prefix="b"/></policy>',
     "send_destination cannot be combined with send_destination_prefix"),
    ('<policy context="default"><allow receive_error="a.E" receive_member="M" receive_path="/"/></policy>',
     "receive_error cannot be combined"),
    ('<policy context="default"><allow send_type="bogus"/></policy>', 'Bad message type "bogus"'),
    ('<policy context="default"><allow receive_type="bogus"/></policy>', 'Bad message type "bogus"'),
    ('<policy context="default"><allow eavesdrop="yes"/></policy>', 'Bad value "yes" for eavesdrop attribute'),
    ('<policy context="default"><allow send_broadcast="maybe"/></policy>', "for send_broadcast attribute"),
    ('<policy context="default"><allow send_requested_reply="maybe"/></policy>', "send_requested_reply"),
    ('<policy context="default"><allow receive_requested_reply="maybe"/></policy>', "receive_requested_reply"),
    ('<policy context="default"><allow send_destination="a" send_broadcast="true"/></policy>',
     "cannot match anything"),
    ('<policy context="default"><allow send_type="signal" max_fds="99999999999"/></policy>',
     f"must be an integer in range 0 to {MAX_MESSAGE_UNIX_FDS} inclusive"),
    ('<policy context="default"><allow receive_type="signal" min_fds="-1"/></policy>', "for min_fds attribute"),
    ('<policy user="root"><allow user="*"/></policy>', "rule cannot be per-user because it has bus-global"),
    ('<policy group="root"><deny group="*"/></policy>', "rule cannot be per-group"),
    ('<apparmor mode="bogus"/>', 'must have value "required", "enabled" or "disabled", not "bogus"'),
    ('<selinux><associate own="a.b"/></selinux>', "must have attributes own="),
    ("<selinux><bogus/></selinux>", "Element <bogus> not allowed inside <selinux>"),
]


VALID = [
    '<policy user="busd-no-such-user"><allow own="*"/></policy>',
    '<policy group="busd-no-such-group"><allow own="*"/></policy>',
    '<policy context="default"><allow user="busd-no-such-user"/></policy>',
    '<policy at_console="true"><allow user="*"/></policy>',
    '<policy context="default"><allow own="x" log="maybe"/></policy>',
    '<policy context="default"><allow send_type="signal" log="maybe"/></policy>',
    '<policy context="default"><allow eavesdrop="true" send_interface="x.y"/></policy>',
    '<policy context="default"><allow send_type="*"/><deny send_member="M" send_path="/"/></policy>',
    '<policy context="mandatory"><deny own_prefix="org.example"/></policy>',
    '<limit name="max_message_size">3000000000</limit>',
    '<limit name="max_containers">5</limit><limit name="reply_timeout">5</limit>',
    '<include ignore_missing="yes">/nonexistent/busd.conf</include>',
    "<includedir>/nonexistent/busd.d</includedir>",
    '<include if_selinux_enabled="yes" selinux_root_relative="yes">contexts/dbus_contexts</include>',
    '<apparmor mode="disabled"/>',
    "<apparmor/>",
    '<selinux><associate own="a.b" context="x_t"/></selinux>',
    "<allow_anonymous/><keep_umask/><syslog/><standard_session_servicedirs/><standard_system_servicedirs/>",
    "<servicedir>/tmp/busd-services</servicedir><auth>EXTERNAL</auth><type>custom</type>",
    "<type>  </type>",
]


def reference_accepts(snippet: str) -> bool:
    """Whether a real dbus-daemon starts with `snippet` added to a working session config."""
    try:
        bus = start_bus("dbus-daemon", extra_config=snippet)
    except RuntimeError:
        return False
    bus.stop()
    return True


def test_dbus_daemon_accepts_the_builtin_session_config():
    bus = start_bus("dbus-daemon", config_text=BUILTIN_SESSION.read_text())
    try:
        assert bus.address.startswith("unix:")
    finally:
        bus.stop()


@pytest.mark.parametrize("snippet, reason", INVALID)
def test_invalid_configs(tmp_path, snippet, reason):
    path = write(tmp_path / "bus.conf", config_with(snippet))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert reason in info.value.reason
    assert not reference_accepts(snippet), "dbus-daemon accepts what busd rejects"


@pytest.mark.parametrize("snippet", VALID)
def test_valid_configs(snippet):
    assert load_config_text(config_with(snippet)).listen == (LISTEN,)
    assert reference_accepts(snippet), "dbus-daemon rejects what busd accepts"


@pytest.mark.parametrize("kind", ["busd", "dbus-daemon"])
def test_daemon_says_plainly_that_its_config_file_does_not_exist(kind):
    command = [sys.executable, "-m", "busd"] if kind == "busd" else ["dbus-daemon"]
    result = subprocess.run([*command, "--config-file=/nonexistent/busd.conf", "--print-address"],
                            capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (1, "")
    assert "/nonexistent/busd.conf" in result.stderr and ":0:" not in result.stderr
    if kind == "busd":
        assert result.stderr == "busd: /nonexistent/busd.conf: no such configuration file\n"
