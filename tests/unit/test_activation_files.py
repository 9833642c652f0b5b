"""Reading .service files and Exec= lines, and the catalog of activatable names (no bus needed)."""

from __future__ import annotations

import logging
import os

import pytest

from busd.bus.activation import ActivationError
from busd.launcher.services import (
    ServiceCatalog, ServiceFileError, parse_desktop_file, read_service_file, split_command_line,
)
from busd.config.model import ServiceDir


def _write(directory, filename: str, text: str) -> str:
    path = os.path.join(str(directory), filename)
    with open(path, "w") as f:
        f.write(text)
    return path


# ------------------------------------------------------------ the desktop-file syntax

def test_desktop_file_sections_keys_comments_and_escapes():
    text = ("# comment\n\n[D-BUS Service]\nName = dev.busd.Example\nExec=/bin/x\\sy \\\\ \\t\\n\\r\n"
            "Name[fr]=ignored\nName=dev.busd.Second\r\n[Other]\nKey=v\n")
    sections = parse_desktop_file(text)
    assert sections == {
        "D-BUS Service": {"Name": "dev.busd.Example", "Exec": "/bin/x y \\ \t\n\r"},
        "Other": {"Key": "v"},
    }


def test_the_first_of_repeated_sections_wins():
    sections = parse_desktop_file("[A]\nKey=first\n[A]\nKey=second\nOther=x\n")
    assert sections == {"A": {"Key": "first"}}


@pytest.mark.parametrize("text, reason", [
    ("Name=x\n", "line 1: key=value before [Section]"),
    ("[]\n", "line 1: invalid syntax for section header"),
    ("[Open\n", "line 1: invalid syntax for section header"),
    ("[Bad\x01Name]\n", "line 1: invalid characters in section name"),
    ("[A]\n=value\n", "line 2: empty key name"),
    ("[A]\nKey value\n", "line 2: invalid characters in key name"),
    ("[A]\nKey\n", "line 2: no '=' in key/value pair"),
    ("[A]\nKey=ends in \\\n", "line 2: value ends in a backslash"),
    ("[A]\nKey=\\q\n", "line 2: invalid escape sequence \\q"),
])
def test_malformed_desktop_files_say_where_and_why(text, reason):
    with pytest.raises(ServiceFileError) as caught:
        parse_desktop_file(text)
    assert str(caught.value) == reason


# ------------------------------------------------------------ .service files

def test_a_service_file_with_every_key(tmp_path):
    path = _write(tmp_path, "dev.busd.Full.service",
                  "[D-BUS Service]\nName=dev.busd.Full\nExec=/usr/bin/full --x\nUser=nobody\n"
                  "SystemdService=full.service\nAssumedAppArmorLabel=unconfined\n")
    service = read_service_file(path)
    assert (service.name, service.exec, service.user, service.systemd_service, service.path) == (
        "dev.busd.Full", "/usr/bin/full --x", "nobody", "full.service", path)


@pytest.mark.parametrize("text, reason", [
    ("[Other]\nName=dev.busd.X\nExec=/bin/true\n", "no [D-BUS Service] section"),
    ("[D-BUS Service]\nExec=/bin/true\n", 'no "Name" key'),
    ("[D-BUS Service]\nName=dev.busd.X\n", 'no "Exec" key'),
    ("[D-BUS Service]\nName=not a name\nExec=/bin/true\n", '"not a name" is not a valid bus name'),
    ("[D-BUS Service]\nName=:1.5\nExec=/bin/true\n",
     "bus name \":1.5\" cannot be activatable because it starts with ':'"),
    ("[D-BUS Service]\nName=org.freedesktop.DBus\nExec=/bin/true\n",
     'bus name "org.freedesktop.DBus" cannot be activatable because it is reserved for the message bus'),
])
def test_service_files_that_cannot_be_used(tmp_path, text, reason):
    path = _write(tmp_path, "x.service", text)
    with pytest.raises(ServiceFileError) as caught:
        read_service_file(path)
    assert str(caught.value) == reason


def test_invalid_utf8_and_oversized_files_are_refused(tmp_path):
    bad = os.path.join(str(tmp_path), "bad.service")
    with open(bad, "wb") as f:
        f.write(b"[D-BUS Service]\nName=dev.busd.X\nExec=/bin/\xff\n")
    with pytest.raises(ServiceFileError, match="not valid UTF-8"):
        read_service_file(bad)
    big = _write(tmp_path, "big.service", "[D-BUS Service]\nName=dev.busd.X\nExec=/bin/true\n" + "#" * 140_000)
    with pytest.raises(ServiceFileError, match="too large"):
        read_service_file(big)


def test_strict_directories_want_the_file_named_after_the_bus_name(tmp_path):
    path = _write(tmp_path, "other.service", "[D-BUS Service]\nName=dev.busd.Strict\nExec=/bin/true\n")
    assert read_service_file(path).name == "dev.busd.Strict"
    with pytest.raises(ServiceFileError, match='should have been named "dev.busd.Strict.service"'):
        read_service_file(path, strict_naming=True)


# ------------------------------------------------------------ Exec= lines

@pytest.mark.parametrize("line, argv", [
    ("/bin/prog a  b\tc", ["/bin/prog", "a", "b", "c"]),
    ("/bin/prog 'single $quoted \\ text'", ["/bin/prog", "single $quoted \\ text"]),
    ('/bin/prog "double \\" \\\\ \\$ \\` \\a"', ["/bin/prog", 'double " \\ $ ` \\a']),
    ("/bin/prog back\\ slash \\'", ["/bin/prog", "back slash", "'"]),
    ("/bin/prog mixed'quo'\"ting\"", ["/bin/prog", "mixedquoting"]),
    ("/bin/prog '' \"\"", ["/bin/prog", "", ""]),
    ("/bin/prog a # comment 'unclosed", ["/bin/prog", "a"]),
    ("/bin/prog a#b", ["/bin/prog", "a"]),
    ("/bin/prog one\\\ntwo", ["/bin/prog", "onetwo"]),
    ("  /bin/prog   ", ["/bin/prog"]),
    ("", []),
])
def test_exec_lines_are_split_like_dbus_daemon(line, argv):
    assert split_command_line(line) == argv


@pytest.mark.parametrize("line", ["/bin/prog 'open", '/bin/prog "open', "/bin/prog trailing\\"])
def test_unclosed_quotes_are_invalid_args(line):
    with pytest.raises(ActivationError) as caught:
        split_command_line(line)
    assert (caught.value.name, caught.value.text) == ("org.freedesktop.DBus.Error.InvalidArgs",
                                                      "Unclosed quotes in command line")


# ------------------------------------------------------------ the catalog

def test_earlier_directories_win_a_name_and_files_come_and_go(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    _write(first, "a.service", "[D-BUS Service]\nName=dev.busd.A\nExec=/bin/first\n")
    _write(second, "a.service", "[D-BUS Service]\nName=dev.busd.A\nExec=/bin/second\n")
    _write(second, "b.service", "[D-BUS Service]\nName=dev.busd.B\nExec=/bin/b\n")
    _write(second, "notes.txt", "[D-BUS Service]\nName=dev.busd.Txt\nExec=/bin/txt\n")
    catalog = ServiceCatalog([ServiceDir(path=str(first)), ServiceDir(path=str(second)),
                              ServiceDir(path=str(tmp_path / "missing"))])
    catalog.scan()
    assert sorted(catalog.names()) == ["dev.busd.A", "dev.busd.B"]
    assert catalog.find("dev.busd.A").exec == "/bin/first"
    os.unlink(first / "a.service")
    assert catalog.find("dev.busd.A").exec == "/bin/second"  # a vanished file is noticed on lookup
    _write(first, "c.service", "[D-BUS Service]\nName=dev.busd.C\nExec=/bin/c\n")
    assert catalog.find("dev.busd.C").exec == "/bin/c"  # an unknown name rescans
    _write(second, "b.service", "[D-BUS Service]\nName=dev.busd.B\nExec=/bin/b --changed\n")
    assert catalog.find("dev.busd.B").exec == "/bin/b --changed"  # so does a changed file
    assert catalog.find("dev.busd.Nobody") is None


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.lines.append(record.getMessage())


def test_a_malformed_file_is_logged_once_with_its_path_and_reason(tmp_path):
    bad = _write(tmp_path, "bad.service", "[D-BUS Service]\nName=dev.busd.Bad\n")
    _write(tmp_path, "good.service", "[D-BUS Service]\nName=dev.busd.Good\nExec=/bin/good\n")
    catalog = ServiceCatalog([ServiceDir(path=str(tmp_path))])
    logger = logging.getLogger("busd.activation")
    collected = _Lines()
    logger.addHandler(collected)
    try:
        catalog.scan()
        catalog.scan()
        assert catalog.find("dev.busd.Bad") is None
    finally:
        logger.removeHandler(collected)
    assert collected.lines == [f'ignoring service file {bad}: no "Exec" key']
    assert catalog.names() == ["dev.busd.Good"]


def test_transient_directories_are_strict_and_not_watched(tmp_path):
    _write(tmp_path, "wrong-name.service", "[D-BUS Service]\nName=dev.busd.Transient\nExec=/bin/true\n")
    _write(tmp_path, "dev.busd.Right.service", "[D-BUS Service]\nName=dev.busd.Right\nExec=/bin/true\n")
    catalog = ServiceCatalog([ServiceDir(path=str(tmp_path), transient=True)])
    catalog.scan()
    assert catalog.names() == ["dev.busd.Right"]
    assert catalog.watched_paths() == []
