"""D-Bus errors as Python exceptions: one class per error name, raised by callers and services alike.

A service replies with an error by raising `DBusError` (or a subclass); a
caller receives the error reply as the most specific registered subclass:

    class NotFound(DBusError, name="dev.busd.Example.Error.NotFound"):
        pass

    raise NotFound("no such item")          # in a service method
    except NotFound as error: error.name    # in the caller
"""

from __future__ import annotations

from typing import ClassVar

_FAILED = "org.freedesktop.DBus.Error.Failed"


class DBusError(Exception):
    """An error reply: `name` is the D-Bus error name, `message` the human-readable text."""

    name: str = _FAILED
    _by_name: ClassVar[dict[str, type[DBusError]]] = {}

    def __init_subclass__(cls, name: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            _check_error_name(name)
            cls.name = name
            DBusError._by_name[name] = cls

    def __init__(self, message: str = "", *, name: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if name is not None:
            _check_error_name(name)
            self.name = name

    def __str__(self) -> str:
        return f"{self.name}: {self.message}" if self.message else self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, name={self.name!r})"

    @staticmethod
    def from_reply(name: str, message: str = "") -> DBusError:
        """The exception for an error reply called `name`: its registered class, else DBusError."""
        cls = DBusError._by_name.get(name)
        if cls is None:
            return DBusError(message, name=name)
        return cls(message)


def _check_error_name(name: str) -> None:
    # Error names follow the interface-name rules: two or more dot-separated elements.
    parts = name.split(".")
    if len(parts) < 2 or len(name) > 255 or not all(
            part and not part[0].isdigit() and all(c.isalnum() or c == "_" for c in part)
            for part in parts):
        raise ValueError(
            f"{name!r} is not a valid D-Bus error name; use a reversed domain name "
            f"such as 'com.example.MyService.Error.NotFound'")


def _standard(short: str) -> str:
    return f"org.freedesktop.DBus.Error.{short}"


class Failed(DBusError, name=_standard("Failed")):
    """The generic failure; also what a service replies when a method raises a non-D-Bus exception."""


class ServiceUnknown(DBusError, name=_standard("ServiceUnknown")):
    """No connection owns the destination name (and it cannot be activated)."""


class NameHasNoOwner(DBusError, name=_standard("NameHasNoOwner")):
    """The name asked about is not owned by anyone."""


class NoReply(DBusError, TimeoutError, name=_standard("NoReply")):
    """No reply arrived within the call's timeout (also a builtin TimeoutError)."""


class Timeout(DBusError, TimeoutError, name=_standard("Timeout")):
    """An operation timed out on the remote side."""


class AccessDenied(DBusError, name=_standard("AccessDenied")):
    """The bus policy or the service refused the operation."""


class InvalidArgs(DBusError, name=_standard("InvalidArgs")):
    """The arguments did not have the expected types or values."""


class ArgumentTypeError(InvalidArgs, TypeError):
    """A value given for a method call, a property or a signal does not fit its D-Bus type.

    Raised before anything is sent, the same on every backend.  It is an
    InvalidArgs (a service method that raises it replies with that error) and
    a TypeError.  `member` is "interface.Member", `position` the argument's
    1-based position (None for a property's value), `argument` its name if
    known, `signature` the expected D-Bus type and `value` what was given.
    """

    def __init__(self, member: str, position: int | None, argument: str | None, signature: str,
                 description: str, value: object, detail: str = "") -> None:
        self.member = member
        self.position = position
        self.argument = argument
        self.signature = signature
        self.value = value
        if position is None:
            what = "the property's value"
        else:
            what = f"argument {position}" + (f" ({argument})" if argument else "")
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        message = (f"{member}: {what} must be {description} (D-Bus type '{signature}'), "
                   f"got {type(value).__name__} {shown}")
        super().__init__(f"{message}: {detail}" if detail else message)


class InvalidSignature(DBusError, name=_standard("InvalidSignature")):
    """A value had the wrong D-Bus type."""


class UnknownMethod(DBusError, name=_standard("UnknownMethod")):
    """The object has no such method (or not with that signature)."""


class UnknownObject(DBusError, name=_standard("UnknownObject")):
    """Nothing is exported at that object path."""


class UnknownInterface(DBusError, name=_standard("UnknownInterface")):
    """The object does not implement that interface."""


class UnknownProperty(DBusError, name=_standard("UnknownProperty")):
    """The interface has no such property."""


class PropertyReadOnly(DBusError, name=_standard("PropertyReadOnly")):
    """The property cannot be set."""


class NotSupported(DBusError, name=_standard("NotSupported")):
    """The operation is not supported."""


class MatchRuleNotFound(DBusError, name=_standard("MatchRuleNotFound")):
    """RemoveMatch named a rule that was not added."""


class MatchRuleInvalid(DBusError, name=_standard("MatchRuleInvalid")):
    """AddMatch got a malformed rule."""


class LimitsExceeded(DBusError, name=_standard("LimitsExceeded")):
    """A bus limit (match rules, names, message size...) was reached."""


class Disconnected(DBusError, ConnectionError, name=_standard("Disconnected")):
    """The connection to the bus is closed (also a builtin ConnectionError)."""


class SharedMemoryError(Exception):
    """Shared memory could not be made, mapped or attached (raised by busd_client itself, not a reply)."""


class SharedMemoryNotFound(SharedMemoryError, LookupError):
    """No process publishes shared memory under that name (nobody owns it)."""


class LockError(Exception):
    """A lock or semaphore on bus names could not be taken or given back as asked."""


class LockTimeout(LockError, TimeoutError):
    """A lock or semaphore was not acquired within its timeout; the waiter has left the name's queue."""
