"""One configuration document, element by element, into a ConfigState: which elements and attributes are allowed where.

The rules are dbus-daemon's (bus/config-parser.c). Files are the loader's: an
<include> or <includedir> is handed to the Includer the parser was given.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol
from xml.parsers import expat

from .attributes import check_attributes, lookup_gid, lookup_uid, yes_no
from .errors import ConfigError, Reject
from .model import (
    BUSD_NAMESPACE, INT_LIMITS, ConfigNote, ExtensionElement, Policy, PolicyRule, SelinuxAssociation, ServiceDir,
)
from .rules import RULE_ATTRIBUTES, RULE_FIELDS, rule_kind
from .servicedirs import add_servicedir, standard_session_servicedirs, standard_system_servicedirs
from .state import ConfigState
from ..wire.records import field, record

_INT_MAX = (1 << 31) - 1
_LONG_MAX = (1 << 63) - 1
_NAMESPACE_SEPARATOR = " "  # cannot occur in a namespace URI or an element name


@record
class _Frame:
    """An open element: `kind` selects which children and text it accepts."""

    name: str
    kind: str  # busconfig, policy, selinux, text, empty, skip, extension
    line: int
    text: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


class Includer(Protocol):
    """What <include> and <includedir> reach: the loader, which reads the files and parses them into `including`."""

    def include(self, including: FileParser, path: str, ignore_missing: bool, line: int) -> None:
        """Parse the file at `path` and merge it into `including`'s state (ConfigError if it cannot)."""
        ...

    def include_dir(self, including: FileParser, directory: str, line: int) -> None:
        """Parse every *.conf file in `directory` into `including`'s state, noting the broken ones."""
        ...


_NO_ATTRIBUTE_TEXT_ELEMENTS = ("user", "type", "listen", "pidfile", "auth", "servicedir", "servicehelper",
                               "includedir")
_FLAG_ELEMENTS = ("fork", "syslog", "keep_umask", "allow_anonymous")


class FileParser:
    """Parses one document into a ConfigState, following includes as they come."""

    def __init__(self, includer: Includer, filename: str, base_dir: str, state: ConfigState) -> None:
        self.includer = includer
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
            "user": self._end_user,
            "type": self._end_type,
            "pidfile": self._end_pidfile,
            "listen": lambda text, frame: self.state.listen.append(text),
            "auth": lambda text, frame: self.state.auth.append(text),
            "servicedir": lambda text, frame: add_servicedir(self.state.servicedirs,
                                                              ServiceDir(path=self._full_path(text))),
            "servicehelper": self._end_servicehelper,
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

    def note(self, line: int, message: str) -> None:
        """A warning about this file, kept in the configuration (ConfigNote)."""
        self.state.notes.append(ConfigNote(file=self.filename, line=line, message=message))

    def _on_start(self, qualified_name: str, raw_attrs: dict[str, str]) -> None:
        line = self._line()
        parent = self.stack[-1] if self.stack else None
        namespace, _, name = qualified_name.rpartition(_NAMESPACE_SEPARATOR)
        try:
            self.stack.append(self._start(parent, namespace, name, raw_attrs, line))
        except Reject as exc:
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
            self.note(line, f"ignored element <{name}> in XML namespace {namespace}")
            return _Frame(name, "skip", line)
        attrs = {}
        for key, value in raw_attrs.items():
            if _NAMESPACE_SEPARATOR in key:
                self.note(line, f"ignored attribute {key.rpartition(_NAMESPACE_SEPARATOR)[2]} "
                                 f"in XML namespace {key.rpartition(_NAMESPACE_SEPARATOR)[0]}")
            else:
                attrs[key] = value
        if parent is None:
            if name != "busconfig":
                raise Reject(f"Unknown element <{name}> at root of configuration file")
            check_attributes(name, attrs)
            self.root_line = line
            return _Frame(name, "busconfig", line)
        if parent.kind == "busconfig":
            start = self.busconfig_children.get(name)
            if start is None:
                raise Reject(f"Element <{name}> not allowed inside <busconfig> in configuration file")
            return start(name, attrs, line)
        if parent.kind == "policy":
            if name not in ("allow", "deny"):
                raise Reject(f"Element <{name}> not allowed inside <policy> in configuration file")
            self._add_rule(parent, name, attrs, line)
            return _Frame(name, "empty", line)
        if parent.kind == "selinux":
            if name != "associate":
                raise Reject(f"Element <{name}> not allowed inside <selinux> in configuration file")
            self._add_association(attrs, line)
            return _Frame(name, "empty", line)
        raise Reject(f"Element <{name}> is not allowed in this context")

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
        except Reject as exc:
            raise ConfigError(self.filename, frame.line, str(exc)) from None

    def _end(self, frame: _Frame) -> None:
        if frame.kind == "text":
            if not frame.text:
                raise Reject(f"XML element <{frame.name}> was expected to have content inside it")
            # Blanks around the value are dropped; dbus-daemon keeps them, which only ever breaks things.
            self.text_handlers[frame.name]("".join(frame.text).strip(), frame)
        elif frame.kind == "extension":
            self._end_extension(frame)
        elif frame.kind == "policy":
            self._end_policy(frame)

    # <busconfig> children

    def _start_text(self, name: str, attrs: dict[str, str], line: int) -> _Frame:
        check_attributes(name, attrs)
        return _Frame(name, "text", line)

    def _start_flag(self, name: str, attrs: dict[str, str], line: int) -> _Frame:
        check_attributes(name, attrs)
        setattr(self.state, name, True)
        return _Frame(name, "empty", line)

    def _start_standard_servicedirs(self, name: str, attrs: dict[str, str], line: int) -> _Frame:
        check_attributes(name, attrs)
        dirs = standard_session_servicedirs() if name == "standard_session_servicedirs" \
            else standard_system_servicedirs()
        for servicedir in dirs:
            add_servicedir(self.state.servicedirs, servicedir)
        return _Frame(name, "empty", line)

    def _start_include(self, name: str, attrs: dict[str, str], line: int) -> _Frame:
        check_attributes(name, attrs, ("ignore_missing", "if_selinux_enabled", "selinux_root_relative"))
        options = {option: yes_no(attrs, option)
                   for option in ("ignore_missing", "if_selinux_enabled", "selinux_root_relative")}
        return _Frame(name, "text", line, data=options)

    def _start_limit(self, name: str, attrs: dict[str, str], line: int) -> _Frame:
        check_attributes(name, attrs, ("name",))
        if "name" not in attrs:
            raise Reject('<limit> element must have a "name" attribute')
        return _Frame(name, "text", line, data={"limit": attrs["name"]})

    def _start_selinux(self, name: str, attrs: dict[str, str], line: int) -> _Frame:
        check_attributes(name, attrs)
        self.note(line, "busd has no SELinux support: <selinux> associations are not enforced")
        return _Frame(name, "selinux", line)

    def _start_apparmor(self, name: str, attrs: dict[str, str], line: int) -> _Frame:
        check_attributes(name, attrs, ("mode",))
        mode = attrs.get("mode")
        if mode is not None and mode not in ("enabled", "disabled", "required"):
            raise Reject(f'Mode attribute on <apparmor> must have value "required", "enabled" or "disabled", '
                          f'not "{mode}"')
        self.state.apparmor_mode = mode or "enabled"
        self.note(line, f'busd has no AppArmor mediation: <apparmor mode="{self.state.apparmor_mode}"/> '
                         "is not enforced")
        return _Frame(name, "empty", line)

    def _add_association(self, attrs: dict[str, str], line: int) -> None:
        check_attributes("associate", attrs, ("own", "context"))
        if "own" not in attrs or "context" not in attrs:
            raise Reject('Element <associate> must have attributes own="<servicename>" '
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
        check_attributes(name, attrs, ("context", "user", "group", "at_console"))
        if len(attrs) != 1:
            raise Reject("<policy> element must have exactly one of (context|user|group|at_console) attributes")
        (attribute, value), = attrs.items()
        policy: dict[str, Any] = {}
        ignored = False
        if attribute == "context":
            if value not in ("default", "mandatory"):
                raise Reject(f'context attribute on <policy> must have the value "default" or "mandatory", '
                              f'not "{value}"')
            policy["context"] = value
        elif attribute == "at_console":
            if value not in ("true", "false"):
                raise Reject(f'Unknown value "{value}" for at_console in message bus configuration file')
            policy["at_console"] = value == "true"
        else:
            lookup, id_field, what = (lookup_uid, "uid", "username") if attribute == "user" \
                else (lookup_gid, "gid", "group")
            number = lookup(value)
            policy[attribute] = value
            if number is None:
                ignored = True
                self.note(line, f'Unknown {what} "{value}" in message bus configuration file: '
                                 "the rules of this <policy> are ignored")
            else:
                policy[id_field] = number
        return _Frame(name, "policy", line, data={"policy": policy, "ignored": ignored, "rules": []})

    def _add_rule(self, policy: _Frame, element: str, attrs: dict[str, str], line: int) -> None:
        check_attributes(element, attrs, RULE_ATTRIBUTES)
        kind = rule_kind(element, attrs)
        fields = RULE_FIELDS[kind](attrs)
        if fields is None:
            name = attrs.get("user") or attrs.get("group")
            self.note(line, f'Unknown {"username" if "user" in attrs else "group"} "{name}" on element '
                             f"<{element}>: the rule is ignored")
            return
        if policy.data["ignored"]:
            return
        if kind in ("user", "group"):
            scope = next((s for s in ("user", "group") if s in policy.data["policy"]), None)
            if scope is not None:
                raise Reject(f"<{element}> rule cannot be per-{scope} because it has bus-global semantics")
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
            raise Reject('busd has no SELinux support, so <include selinux_root_relative="yes"> cannot be resolved; '
                          'add if_selinux_enabled="yes" or give a plain path')
        self.includer.include(self, self._full_path(text), options["ignore_missing"], frame.line)

    def _end_includedir(self, text: str, frame: _Frame) -> None:
        self.includer.include_dir(self, self._full_path(text), frame.line)

    def _end_user(self, text: str, frame: _Frame) -> None:
        self.state.user = text

    def _end_type(self, text: str, frame: _Frame) -> None:
        self.state.type = text

    def _end_pidfile(self, text: str, frame: _Frame) -> None:
        self.state.pidfile = text

    def _end_servicehelper(self, text: str, frame: _Frame) -> None:
        self.state.servicehelper = self._full_path(text)

    def _end_limit(self, text: str, frame: _Frame) -> None:
        name = frame.data["limit"]
        try:
            value = int(text, 10)
        except ValueError:
            value = None
        if value is None or abs(value) > _LONG_MAX:
            raise Reject(f'<limit name="{name}"> element has invalid value (could not parse as integer)')
        if name not in self.state.limits:
            raise Reject(f'There is no limit called "{name}"')
        if value < 0:
            raise Reject(f'<limit name="{name}"> must be a positive number')
        if name in INT_LIMITS and value > _INT_MAX:
            raise Reject(f'<limit name="{name}"> value is too large')
        self.state.limits[name] = value
