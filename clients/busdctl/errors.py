"""Errors busdctl reports on standard error, each tied to an exit code scripts can rely on."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Error names meaning "this bus has no such method": fall back, or explain the bus lacks it.
NOT_SUPPORTED = frozenset({"org.freedesktop.DBus.Error.UnknownMethod",
                           "org.freedesktop.DBus.Error.UnknownInterface",
                           "org.freedesktop.DBus.Error.NotSupported"})
# Error names meaning "that name has no owner (any more)".
GONE = frozenset({"org.freedesktop.DBus.Error.NameHasNoOwner"})
INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"

# What to try next, by D-Bus error name: shown under the error itself.
ERROR_HINTS: dict[str, str] = {
    "org.freedesktop.DBus.Error.ServiceUnknown": "Check the name with 'busdctl list'.",
    "org.freedesktop.DBus.Error.NameHasNoOwner": "Check the name with 'busdctl list'.",
    "org.freedesktop.DBus.Error.UnknownObject": "List the service's objects with 'busdctl tree SERVICE'.",
    "org.freedesktop.DBus.Error.UnknownInterface":
        "List the object's interfaces with 'busdctl introspect SERVICE OBJECT'.",
    "org.freedesktop.DBus.Error.UnknownMethod":
        "List the object's methods and their signatures with 'busdctl introspect SERVICE OBJECT'.",
    "org.freedesktop.DBus.Error.UnknownProperty":
        "List the object's properties with 'busdctl introspect SERVICE OBJECT'.",
    # InvalidArgs also means the service refused a value; `call` and `set-property` add a
    # hint of their own when the signature given is not the one the object declares.
    "org.freedesktop.DBus.Error.InvalidSignature":
        "Compare the signature you gave with 'busdctl introspect SERVICE OBJECT'.",
    "org.freedesktop.DBus.Error.PropertyReadOnly": "This property cannot be set.",
    "org.freedesktop.DBus.Error.AccessDenied": "The bus policy refuses this; check the bus configuration.",
    "org.freedesktop.DBus.Error.NoReply": "The peer did not answer in time; try a longer --timeout.",
    "org.freedesktop.DBus.Error.Timeout": "The peer did not answer in time; try a longer --timeout.",
}


class CommandError(Exception):
    """A failure busdctl reports in one message; the process exits with EXIT_FAILURE."""

    exit_code = EXIT_FAILURE


class UsageError(CommandError):
    """The command line is wrong: an unknown verb, a missing argument, a value that does not parse."""

    exit_code = EXIT_USAGE


class BusError(CommandError):
    """A D-Bus error reply, reported with its error name and, when we know one, a hint."""

    def __init__(self, action: str, error_name: str, text: str, hint: str | None = None) -> None:
        self.action = action
        self.error_name = error_name
        self.text = text
        self.hint = hint if hint is not None else ERROR_HINTS.get(error_name)
        message = f"{action}: {error_name}: {text}" if text else f"{action}: {error_name}"
        if self.hint:
            message += f"\nHint: {self.hint}"
        super().__init__(message)

    def with_hint(self, hint: str) -> BusError:
        return BusError(self.action, self.error_name, self.text, hint)
