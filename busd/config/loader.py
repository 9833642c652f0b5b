"""Read dbus-daemon XML configuration files, with their includes, into a BusConfig.

The rules are dbus-daemon's (bus/config-parser.c): which elements and
attributes are allowed where, which combinations are rejected, how included
files merge (the last <type>, <user>, <pidfile> wins, <listen>s accumulate,
limits carry over), and which problems are only warnings (unknown users and
groups, broken files in an <includedir>). Errors carry the file and line.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.parsers import expat

from .model import (
    BUSD_NAMESPACE, INT_LIMITS, MAX_MESSAGE_UNIX_FDS, BusConfig, ConfigNote, ExtensionElement, LimitSettings, Policy,
    PolicyRule, SelinuxAssociation, ServiceDir,
)

DATADIR = "/usr/share"  # dbus-daemon's ${datadir} on Debian
_INT_MAX = (1 << 31) - 1
_LONG_MAX = (1 << 63) - 1
_NAMESPACE_SEPARATOR = " "  # cannot occur in a namespace URI or an element name
_PACKAGE_DIR = Path(__file__).resolve().parent


class ConfigError(Exception):
    """A configuration the bus refuses to start with; str() is "FILE:LINE: reason" ("FILE: reason" for line 0,
    a problem with the file as a whole)."""

    def __init__(self, file: str, line: int, reason: str) -> None:
        super().__init__(file, line, reason)
        self.file = file
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        if self.line == 0:
            return f"{self.file}: {self.reason}"
        return f"{self.file}:{self.line}: {self.reason}"


class _Reject(Exception):
    """A reason to refuse the element being handled; the parser adds file and line."""


# -- standard service directories ----------------------------------------------

def _home_directory() -> str:
    # dbus-daemon asks the user database, not $HOME.
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return os.path.expanduser("~")


def standard_session_servicedirs(environ: Mapping[str, str] | None = None) -> list[ServiceDir]:
    """<standard_session_servicedirs/>, in dbus-daemon's order, duplicates removed."""
    env = os.environ if environ is None else environ
    dirs: list[ServiceDir] = []
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        dirs.append(ServiceDir(path=os.path.join(runtime_dir, "dbus-1/services"), transient=True))
    data_home = env.get("XDG_DATA_HOME") or os.path.join(_home_directory(), ".local/share")
    data_dirs = env.get("XDG_DATA_DIRS")
    search = [data_home, *(data_dirs.split(":") if data_dirs is not None else ["/usr/local/share", "/usr/share"]),
              DATADIR]
    for base in search:
        if base:
            _add_servicedir(dirs, ServiceDir(path=os.path.join(base, "dbus-1/services")))
    return dirs


def standard_system_servicedirs() -> list[ServiceDir]:
    """<standard_system_servicedirs/>, in dbus-daemon's order, duplicates removed."""
    dirs: list[ServiceDir] = []
    for base in ("/usr/local/share", "/usr/share", DATADIR, "/lib"):
        _add_servicedir(dirs, ServiceDir(path=os.path.join(base, "dbus-1/system-services")))
    return dirs


def _add_servicedir(dirs: list[ServiceDir], new: ServiceDir) -> None:
    for i, existing in enumerate(dirs):
        if existing.path == new.path:
            # A directory listed both ways is watched and loosely named, as dbus-daemon does.
            dirs[i] = ServiceDir(path=new.path, transient=existing.transient and new.transient)
            return
    dirs.append(new)


# -- what one file contributes ------------------------------------------------------

@dataclass
class _State:
    """The configuration read so far from one file and its includes."""

    limits: dict[str, int] = field(default_factory=lambda: LimitSettings().model_dump())
    type: str | None = None
    user: str | None = None
    pidfile: str | None = None
    servicehelper: str | None = None
    fork: bool = False
    keep_umask: bool = False
    syslog: bool = False
    allow_anonymous: bool = False
    listen: list[str] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    servicedirs: list[ServiceDir] = field(default_factory=list)
    includedirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    policies: list[Policy] = field(default_factory=list)
    apparmor_mode: str | None = None
    selinux: list[SelinuxAssociation] = field(default_factory=list)
    extensions: list[ExtensionElement] = field(default_factory=list)
    notes: list[ConfigNote] = field(default_factory=list)

    def for_included_file(self) -> _State:
        """A fresh state for an included file; only the limits carry over."""
        return _State(limits=dict(self.limits))

    def merge(self, included: _State) -> None:
        """Take in an included file's state, as dbus-daemon's merge_included does."""
        for name in ("type", "user", "pidfile", "servicehelper", "apparmor_mode"):
            value = getattr(included, name)
            if value is not None:
                setattr(self, name, value)
        # <syslog/> is deliberately not carried out of included files: dbus-daemon doesn't.
        self.fork |= included.fork
        self.keep_umask |= included.keep_umask
        self.allow_anonymous |= included.allow_anonymous
        self.limits = included.limits
        for name in ("listen", "auth", "includedirs", "files", "policies", "selinux", "extensions", "notes"):
            getattr(self, name).extend(getattr(included, name))
        for servicedir in included.servicedirs:
            _add_servicedir(self.servicedirs, servicedir)

    def to_config(self) -> BusConfig:
        return BusConfig(
            type=self.type, user=self.user, fork=self.fork, keep_umask=self.keep_umask, syslog=self.syslog,
            allow_anonymous=self.allow_anonymous, pidfile=self.pidfile, listen=tuple(self.listen),
            auth=tuple(self.auth), servicedirs=tuple(self.servicedirs), servicehelper=self.servicehelper,
            includedirs=tuple(self.includedirs), files=tuple(self.files), limits=LimitSettings(**self.limits),
            policies=tuple(self.policies), apparmor_mode=self.apparmor_mode, selinux=tuple(self.selinux),
            extensions=tuple(self.extensions), notes=tuple(self.notes),
        )


# -- attribute values -----------------------------------------------------------------

def _lookup_uid(user: str) -> int | None:
    if user.isascii() and user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _lookup_gid(group: str) -> int | None:
    if group.isascii() and group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def _wildcard(value: str | None) -> str | None:
    """In a rule "*" means any value, which the model spells None."""
    return None if value == "*" else value


def _true_false(attrs: dict[str, str], name: str) -> bool | None:
    value = attrs.get(name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise _Reject(f'Bad value "{value}" for {name} attribute, must be true or false')
    return value == "true"


def _yes_no(attrs: dict[str, str], name: str) -> bool:
    value = attrs.get(name, "no")
    if value not in ("yes", "no"):
        raise _Reject(f'{name} attribute must have value "yes" or "no"')
    return value == "yes"


def _fd_count(attrs: dict[str, str], name: str, default: int) -> int:
    value = attrs.get(name)
    if value is None:
        return default
    try:
        number = int(value.strip(), 10)
    except ValueError:
        number = -1
    if not 0 <= number <= MAX_MESSAGE_UNIX_FDS:
        raise _Reject(f'Bad value "{value}" for {name} attribute, '
                      f"must be an integer in range 0 to {MAX_MESSAGE_UNIX_FDS} inclusive")
    return number


def _message_type(value: str | None) -> str | None:
    value = _wildcard(value)
    if value is not None and value not in ("method_call", "method_return", "error", "signal"):
        raise _Reject(f'Bad message type "{value}"')
    return value


def _check_attributes(element: str, attrs: dict[str, str], allowed: tuple[str, ...] = ()) -> None:
    for name in attrs:
        if name not in allowed:
            raise _Reject(f'Attribute "{name}" is invalid on <{element}> element in this context')


# -- <allow> and <deny> -----------------------------------------------------------------

_SEND_ATTRIBUTES = ("send_interface", "send_member", "send_error", "send_destination", "send_destination_prefix",
                    "send_path", "send_type", "send_broadcast", "send_requested_reply")
_RECEIVE_ATTRIBUTES = ("receive_interface", "receive_member", "receive_error", "receive_sender", "receive_path",
                       "receive_type", "receive_requested_reply")
_RULE_ATTRIBUTES = (*_SEND_ATTRIBUTES, *_RECEIVE_ATTRIBUTES, "eavesdrop", "max_fds", "min_fds",
                    "own", "own_prefix", "user", "group", "log")


def _rule_kind(element: str, attrs: dict[str, str]) -> str:
    """Which kind of rule the attributes make, with dbus-daemon's combination checks."""
    has = attrs.__contains__
    any_send = any(map(has, _SEND_ATTRIBUTES))
    # <allow eavesdrop="true"/> alone is a receive rule; with send_ attributes it stays a send rule.
    any_receive = any(map(has, _RECEIVE_ATTRIBUTES)) or (not any_send and has("eavesdrop"))
    any_message = any_send or any_receive or has("eavesdrop") or has("max_fds") or has("min_fds")
    others = [name for name in ("own", "own_prefix", "user", "group") if has(name)]
    if not (any_send or any_receive or others):
        raise _Reject(f"Element <{element}> must have one or more attributes")
    if (has("send_member") and not (has("send_interface") or has("send_path"))) or \
            (has("receive_member") and not (has("receive_interface") or has("receive_path"))):
        raise _Reject(f"On element <{element}>, if you specify a member you must specify an interface or a path. "
                      "Keep in mind that not all messages have an interface field.")
    if any_message + len(others) > 1:
        raise _Reject(f"Invalid combination of attributes on element <{element}>: own, own_prefix, user, group "
                      "and the message-related attributes cannot be combined")
    if any_send and any_receive:
        raise _Reject(f"Invalid combination of attributes on element <{element}>: "
                      "send and receive attributes cannot be combined")
    if (has("send_member") or has("send_interface")) and has("send_error"):
        raise _Reject(f"Invalid combination of attributes on element <{element}>: "
                      "send_error cannot be combined with send_member or send_interface")
    if has("send_destination") and has("send_destination_prefix"):
        raise _Reject(f"Invalid combination of attributes on element <{element}>: "
                      "send_destination cannot be combined with send_destination_prefix")
    if (has("receive_member") or has("receive_interface")) and has("receive_error"):
        raise _Reject(f"Invalid combination of attributes on element <{element}>: "
                      "receive_error cannot be combined with receive_member or receive_interface")
    if any_send:
        return "send"
    if any_receive:
        return "receive"
    return others[0].removesuffix("_prefix")


def _send_fields(attrs: dict[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "send_type": _message_type(attrs.get("send_type")),
        "eavesdrop": bool(_true_false(attrs, "eavesdrop")),
        "send_broadcast": _true_false(attrs, "send_broadcast"),
    }
    if fields["send_broadcast"] and _wildcard(attrs.get("send_destination")) is not None:
        raise _Reject(f'Rule with send_broadcast="true" and send_destination="{attrs["send_destination"]}" '
                      "cannot match anything")
    fields["send_requested_reply"] = _true_false(attrs, "send_requested_reply")
    fields["max_fds"] = _fd_count(attrs, "max_fds", MAX_MESSAGE_UNIX_FDS)
    fields["min_fds"] = _fd_count(attrs, "min_fds", 0)
    fields["log"] = attrs.get("log") == "true"
    for name in ("send_interface", "send_member", "send_error", "send_destination", "send_path"):
        fields[name] = _wildcard(attrs.get(name))
    fields["send_destination_prefix"] = attrs.get("send_destination_prefix")
    return fields


def _receive_fields(attrs: dict[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "receive_type": _message_type(attrs.get("receive_type")),
        "eavesdrop": bool(_true_false(attrs, "eavesdrop")),
        "receive_requested_reply": _true_false(attrs, "receive_requested_reply"),
        "max_fds": _fd_count(attrs, "max_fds", MAX_MESSAGE_UNIX_FDS),
        "min_fds": _fd_count(attrs, "min_fds", 0),
    }
    for name in ("receive_interface", "receive_member", "receive_error", "receive_sender", "receive_path"):
        fields[name] = _wildcard(attrs.get(name))
    return fields


def _own_fields(attrs: dict[str, str]) -> dict[str, Any]:
    if "own" in attrs:
        return {"own": _wildcard(attrs["own"])}
    return {"own_prefix": attrs["own_prefix"]}


def _identity_fields(attr: str, id_attr: str, lookup: Callable[[str], int | None]) -> Callable[..., Any]:
    def fields(attrs: dict[str, str]) -> dict[str, Any] | None:
        name = _wildcard(attrs[attr])
        if name is None:
            return {}
        number = lookup(name)
        return None if number is None else {attr: name, id_attr: number}
    return fields


_RULE_FIELDS: dict[str, Callable[[dict[str, str]], dict[str, Any] | None]] = {
    "send": _send_fields,
    "receive": _receive_fields,
    "own": _own_fields,
    "user": _identity_fields("user", "uid", _lookup_uid),
    "group": _identity_fields("group", "gid", _lookup_gid),
}


# -- one file ---------------------------------------------------------------------------

@dataclass
class _Frame:
    """An open element: `kind` selects which children and text it accepts."""

    name: str
    kind: str  # busconfig, policy, selinux, text, empty, skip, extension
    line: int
    text: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


_NO_ATTRIBUTE_TEXT_ELEMENTS = ("user", "type", "listen", "pidfile", "auth", "servicedir", "servicehelper",
                               "includedir")
_FLAG_ELEMENTS = ("fork", "syslog", "keep_umask", "allow_anonymous")


class _FileParser:
    """Parses one document into a _State, following includes as they come."""

    def __init__(self, loader: _Loader, filename: str, base_dir: str, state: _State) -> None:
        self.loader = loader
        self.filename = filename
        self.base_dir = base_dir
        self.state = state
        self.stack: list[_Frame] = []
        self.root_line = 1
        self.expat: Any = None
        self.busconfig_children: dict[str, Callable[[str, dict[str, str], int], _Frame]] = {
            **{name: self._start_text for name in _NO_ATTRIBUTE_TEXT_ELEMENTS},
            **{name: self._start_flag for name in _FLAG_ELEMENTS},
            "include": self._start_include,
            "limit": self._start_limit,
            "policy": self._start_policy,
            "standard_session_servicedirs": self._start_standard_servicedirs,
            "standard_system_servicedirs": self._start_standard_servicedirs,
            "selinux": self._start_selinux,
            "apparmor": self._start_apparmor,
        }
        self.text_handlers: dict[str, Callable[[str, _Frame], None]] = {
            "user": lambda text, frame: setattr(self.state, "user", text),
            "type": lambda text, frame: setattr(self.state, "type", text),
            "pidfile": lambda text, frame: setattr(self.state, "pidfile", text),
            "listen": lambda text, frame: self.state.listen.append(text),
            "auth": lambda text, frame: self.state.auth.append(text),
            "servicedir": lambda text, frame: _add_servicedir(self.state.servicedirs,
                                                              ServiceDir(path=self._full_path(text))),
            "servicehelper": lambda text, frame: setattr(self.state, "servicehelper", self._full_path(text)),
            "include": self._end_include,
            "includedir": self._end_includedir,
            "limit": self._end_limit,
        }

    # expat plumbing

    def parse(self, data: bytes | str) -> None:
        if isinstance(data, str):
            parser = expat.ParserCreate("UTF-8", namespace_separator=_NAMESPACE_SEPARATOR)
            data = data.encode("utf-8")
        else:
            parser = expat.ParserCreate(namespace_separator=_NAMESPACE_SEPARATOR)
        parser.buffer_text = False  # unbuffered text events carry their own line numbers
        parser.StartElementHandler = self._on_start
        parser.EndElementHandler = self._on_end
        parser.CharacterDataHandler = self._on_text
        self.expat = parser
        try:
            parser.Parse(data, True)
        except expat.ExpatError as exc:
            raise ConfigError(self.filename, exc.lineno, f"not well-formed XML: {expat.errors.messages[exc.code]}")
        finally:
            self.expat = None

    def _line(self) -> int:
        return self.expat.CurrentLineNumber

    def _note(self, line: int, message: str) -> None:
        self.state.notes.append(ConfigNote(file=self.filename, line=line, message=message))

    def _on_start(self, qualified_name: str, raw_attrs: dict[str, str]) -> None:
        line = self._line()
        parent = self.stack[-1] if self.stack else None
        namespace, _, name = qualified_name.rpartition(_NAMESPACE_SEPARATOR)
        try:
            self.stack.append(self._start(parent, namespace, name, raw_attrs, line))
        except _Reject as exc:
            raise ConfigError(self.filename, line, str(exc)) from None

    def _start(self, parent: _Frame | None, namespace: str, name: str, raw_attrs: dict[str, str],
               line: int) -> _Frame:
        if parent is not None and parent.kind == "skip":
            return _Frame(name, "skip", line)
        if parent is not None and parent.kind == "extension":
            return _Frame(name, "extension", line, data={"attributes": raw_attrs})
        if namespace:
            if namespace == BUSD_NAMESPACE and parent is not None and parent.kind == "busconfig":
                return _Frame(name, "extension", line, data={"attributes": raw_attrs})
            self._note(line, f"ignored element <{name}> in XML namespace {namespace}")
            return _Frame(name, "skip", line)
        attrs = {}
        for key, value in raw_attrs.items():
            if _NAMESPACE_SEPARATOR in key:
                self._note(line, f"ignored attribute {key.rpartition(_NAMESPACE_SEPARATOR)[2]} "
                                 f"in XML namespace {key.rpartition(_NAMESPACE_SEPARATOR)[0]}")
            else:
                attrs[key] = value
        if parent is None:
            if name != "busconfig":
                raise _Reject(f"Unknown element <{name}> at root of configuration file")
            _check_attributes(name, attrs)
            self.root_line = line
            return _Frame(name, "busconfig", line)
        if parent.kind == "busconfig":
            start = self.busconfig_children.get(name)
            if start is None:
                raise _Reject(f"Element <{name}> not allowed inside <busconfig> in configuration file")
            return start(name, attrs, line)
        if parent.kind == "policy":
            if name not in ("allow", "deny"):
                raise _Reject(f"Element <{name}> not allowed inside <policy> in configuration file")
            self._add_rule(parent, name, attrs, line)
            return _Frame(name, "empty", line)
        if parent.kind == "selinux":
            if name != "associate":
                raise _Reject(f"Element <{name}> not allowed inside <selinux> in configuration file")
            self._add_association(attrs, line)
            return _Frame(name, "empty", line)
        raise _Reject(f"Element <{name}> is not allowed in this context")

    def _on_text(self, text: str) -> None:
        frame = self.stack[-1]
        if frame.kind in ("text", "extension"):
            frame.text.append(text)
        elif frame.kind != "skip" and text.strip():
            raise ConfigError(self.filename, self._line(),
                              f"No text content expected inside XML element {frame.name} in configuration file")

    def _on_end(self, qualified_name: str) -> None:
        frame = self.stack.pop()
        try:
            self._end(frame)
        except _Reject as exc:
            raise ConfigError(self.filename, frame.line, str(exc)) from None

    def _end(self, frame: _Frame) -> None:
        if frame.kind == "text":
            if not frame.text:
                raise _Reject(f"XML element <{frame.name}> was expected to have content inside it")
            # Blanks around the value are dropped; dbus-daemon keeps them, which only ever breaks things.
            self.text_handlers[frame.name]("".join(frame.text).strip(), frame)
        elif frame.kind == "extension":
            self._end_extension(frame)
        elif frame.kind == "policy":
            self._end_policy(frame)

    # <busconfig> children

    def _start_text(self, name: str, attrs: dict[str, str], line: int) -> _Frame:
        _check_attributes(name, attrs)
        return _Frame(name, "text", line)

    def _start_flag(self, name: str, attrs: dict[str, str], line: int) -> _Frame:
        _check_attributes(name, attrs)
        setattr(self.state, name, True)
        return _Frame(name, "empty", line)

    def _start_standard_servicedirs(self, name: str, attrs: dict[str, str], line: int) -> _Frame:
        _check_attributes(name, attrs)
        dirs = standard_session_servicedirs() if name == "standard_session_servicedirs" \
            else standard_system_servicedirs()
        for servicedir in dirs:
            _add_servicedir(self.state.servicedirs, servicedir)
        return _Frame(name, "empty", line)

    def _start_include(self, name: str, attrs: dict[str, str], line: int) -> _Frame:
        _check_attributes(name, attrs, ("ignore_missing", "if_selinux_enabled", "selinux_root_relative"))
        options = {option: _yes_no(attrs, option)
                   for option in ("ignore_missing", "if_selinux_enabled", "selinux_root_relative")}
        return _Frame(name, "text", line, data=options)

    def _start_limit(self, name: str, attrs: dict[str, str], line: int) -> _Frame:
        _check_attributes(name, attrs, ("name",))
        if "name" not in attrs:
            raise _Reject('<limit> element must have a "name" attribute')
        return _Frame(name, "text", line, data={"limit": attrs["name"]})

    def _start_selinux(self, name: str, attrs: dict[str, str], line: int) -> _Frame:
        _check_attributes(name, attrs)
        self._note(line, "busd has no SELinux support: <selinux> associations are not enforced")
        return _Frame(name, "selinux", line)

    def _start_apparmor(self, name: str, attrs: dict[str, str], line: int) -> _Frame:
        _check_attributes(name, attrs, ("mode",))
        mode = attrs.get("mode")
        if mode is not None and mode not in ("enabled", "disabled", "required"):
            raise _Reject(f'Mode attribute on <apparmor> must have value "required", "enabled" or "disabled", '
                          f'not "{mode}"')
        self.state.apparmor_mode = mode or "enabled"
        self._note(line, f'busd has no AppArmor mediation: <apparmor mode="{self.state.apparmor_mode}"/> '
                         "is not enforced")
        return _Frame(name, "empty", line)

    def _add_association(self, attrs: dict[str, str], line: int) -> None:
        _check_attributes("associate", attrs, ("own", "context"))
        if "own" not in attrs or "context" not in attrs:
            raise _Reject('Element <associate> must have attributes own="<servicename>" '
                          'and context="<selinux context>"')
        self.state.selinux.append(SelinuxAssociation(own=attrs["own"], context=attrs["context"],
                                                     file=self.filename, line=line))

    def _end_extension(self, frame: _Frame) -> None:
        element = ExtensionElement(name=frame.name, attributes=frame.data["attributes"],
                                   text="".join(frame.text).strip(), children=tuple(frame.data.get("children", ())),
                                   file=self.filename, line=frame.line)
        parent = self.stack[-1]
        if parent.kind == "extension":
            parent.data.setdefault("children", []).append(element)
        else:
            self.state.extensions.append(element)

    # <policy>

    def _start_policy(self, name: str, attrs: dict[str, str], line: int) -> _Frame:
        _check_attributes(name, attrs, ("context", "user", "group", "at_console"))
        if len(attrs) != 1:
            raise _Reject("<policy> element must have exactly one of (context|user|group|at_console) attributes")
        (attribute, value), = attrs.items()
        policy: dict[str, Any] = {}
        ignored = False
        if attribute == "context":
            if value not in ("default", "mandatory"):
                raise _Reject(f'context attribute on <policy> must have the value "default" or "mandatory", '
                              f'not "{value}"')
            policy["context"] = value
        elif attribute == "at_console":
            if value not in ("true", "false"):
                raise _Reject(f'Unknown value "{value}" for at_console in message bus configuration file')
            policy["at_console"] = value == "true"
        else:
            lookup, id_field, what = (_lookup_uid, "uid", "username") if attribute == "user" \
                else (_lookup_gid, "gid", "group")
            number = lookup(value)
            policy[attribute] = value
            if number is None:
                ignored = True
                self._note(line, f'Unknown {what} "{value}" in message bus configuration file: '
                                 "the rules of this <policy> are ignored")
            else:
                policy[id_field] = number
        return _Frame(name, "policy", line, data={"policy": policy, "ignored": ignored, "rules": []})

    def _add_rule(self, policy: _Frame, element: str, attrs: dict[str, str], line: int) -> None:
        _check_attributes(element, attrs, _RULE_ATTRIBUTES)
        kind = _rule_kind(element, attrs)
        fields = _RULE_FIELDS[kind](attrs)
        if fields is None:
            name = attrs.get("user") or attrs.get("group")
            self._note(line, f'Unknown {"username" if "user" in attrs else "group"} "{name}" on element '
                             f"<{element}>: the rule is ignored")
            return
        if policy.data["ignored"]:
            return
        if kind in ("user", "group"):
            scope = next((s for s in ("user", "group") if s in policy.data["policy"]), None)
            if scope is not None:
                raise _Reject(f"<{element}> rule cannot be per-{scope} because it has bus-global semantics")
        policy.data["rules"].append(PolicyRule(allow=element == "allow", kind=kind, file=self.filename, line=line,
                                               **fields))

    def _end_policy(self, frame: _Frame) -> None:
        if frame.data["ignored"]:
            return
        self.state.policies.append(Policy(**frame.data["policy"], rules=tuple(frame.data["rules"]),
                                          file=self.filename, line=frame.line))

    # text elements

    def _full_path(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(self.base_dir, path)

    def _end_include(self, text: str, frame: _Frame) -> None:
        options = frame.data
        if options["if_selinux_enabled"]:
            return  # busd never has SELinux enabled
        if options["selinux_root_relative"]:
            raise _Reject('busd has no SELinux support, so <include selinux_root_relative="yes"> cannot be resolved; '
                          'add if_selinux_enabled="yes" or give a plain path')
        self.loader.include(self, self._full_path(text), options["ignore_missing"], frame.line)

    def _end_includedir(self, text: str, frame: _Frame) -> None:
        directory = self._full_path(text)
        try:
            entries = sorted(os.listdir(directory))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _Reject(f'Failed to read directory "{directory}": {exc.strerror}') from None
        for entry in entries:
            path = os.path.join(directory, entry)
            if not entry.endswith(".conf") or os.path.isdir(path):
                continue
            try:
                self.loader.include(self, path, True, frame.line)
            except ConfigError as exc:
                # dbus-daemon logs a broken file in an <includedir> and carries on without it.
                self._note(frame.line, f"ignored {path}: {exc}")
        self.state.includedirs.append(directory)

    def _end_limit(self, text: str, frame: _Frame) -> None:
        name = frame.data["limit"]
        try:
            value = int(text, 10)
        except ValueError:
            value = None
        if value is None or abs(value) > _LONG_MAX:
            raise _Reject(f'<limit name="{name}"> element has invalid value (could not parse as integer)')
        if name not in self.state.limits:
            raise _Reject(f'There is no limit called "{name}"')
        if value < 0:
            raise _Reject(f'<limit name="{name}"> must be a positive number')
        if name in INT_LIMITS and value > _INT_MAX:
            raise _Reject(f'<limit name="{name}"> value is too large')
        self.state.limits[name] = value


class _Loader:
    """Reads a top-level file and everything it includes; detects include loops."""

    def __init__(self) -> None:
        self.open_files: list[str] = []

    def load(self, data: bytes | str, filename: str, base_dir: str, from_file: bool) -> BusConfig:
        state = _State()
        if from_file:
            state.files.append(filename)
            self.open_files.append(os.path.abspath(filename))
        parser = _FileParser(self, filename, base_dir, state)
        parser.parse(data)
        if not state.listen:
            raise ConfigError(filename, parser.root_line,
                              "Configuration file needs one or more <listen> elements giving addresses")
        return state.to_config()

    def include(self, including: _FileParser, path: str, ignore_missing: bool, line: int) -> None:
        key = os.path.abspath(path)
        if key in self.open_files:
            raise ConfigError(including.filename, line, f"Circular inclusion of file '{path}'")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            if ignore_missing:
                return
            raise ConfigError(including.filename, line, f'Failed to open "{path}": No such file or directory') \
                from None
        except OSError as exc:
            raise ConfigError(including.filename, line, f'Failed to open "{path}": {exc.strerror}') from None
        state = including.state.for_included_file()
        state.files.append(path)
        self.open_files.append(key)
        try:
            _FileParser(self, path, os.path.dirname(path), state).parse(data)
        finally:
            self.open_files.pop()
        including.state.merge(state)


def load_config(path: str | os.PathLike[str]) -> BusConfig:
    """Load a configuration file and everything it includes; raises ConfigError."""
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(filename, 0, "no such configuration file") from None
    except OSError as exc:
        raise ConfigError(filename, 0, f"cannot read the configuration file: {exc.strerror}") from None
    return _Loader().load(data, filename, os.path.dirname(os.path.abspath(filename)), True)


def load_config_text(text: str, base_dir: str | os.PathLike[str] | None = None,
                     filename: str = "<config>") -> BusConfig:
    """Load a configuration from a string; relative includes resolve against `base_dir` (default: cwd)."""
    directory = os.fspath(base_dir) if base_dir is not None else os.getcwd()
    return _Loader().load(text, filename, directory, False)


def builtin_session_config() -> BusConfig:
    """busd's own self-contained session bus configuration (busd/config/session.conf)."""
    return load_config(_PACKAGE_DIR / "session.conf")


def builtin_system_config() -> BusConfig:
    """busd's own system bus configuration (busd/config/system.conf)."""
    return load_config(_PACKAGE_DIR / "system.conf")


__all__ = [
    "ConfigError", "builtin_session_config", "builtin_system_config", "load_config", "load_config_text",
    "standard_session_servicedirs", "standard_system_servicedirs",
]
