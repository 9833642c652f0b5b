"""The D-Bus message format's numbers, as the specification's tables give them: message types, flags,
header field codes and sizes. busd.wire.message, which reads and builds messages by them, exports them too.
"""

from .marshal import MAX_ARRAY_LENGTH

# Message types
METHOD_CALL = 1
METHOD_RETURN = 2
ERROR = 3
SIGNAL = 4
TYPE_NAMES = {METHOD_CALL: "method_call", METHOD_RETURN: "method_return", ERROR: "error", SIGNAL: "signal"}

# Flags
NO_REPLY_EXPECTED = 0x1
NO_AUTO_START = 0x2
ALLOW_INTERACTIVE_AUTHORIZATION = 0x4

# Header field codes
PATH = 1
INTERFACE = 2
MEMBER = 3
ERROR_NAME = 4
REPLY_SERIAL = 5
DESTINATION = 6
SENDER = 7
SIGNATURE = 8
UNIX_FDS = 9
FIELD_NAMES = {PATH: "PATH", INTERFACE: "INTERFACE", MEMBER: "MEMBER", ERROR_NAME: "ERROR_NAME",
               REPLY_SERIAL: "REPLY_SERIAL", DESTINATION: "DESTINATION", SENDER: "SENDER",
               SIGNATURE: "SIGNATURE", UNIX_FDS: "UNIX_FDS"}
FIELD_TYPES = {PATH: "o", INTERFACE: "s", MEMBER: "s", ERROR_NAME: "s", REPLY_SERIAL: "u",
               DESTINATION: "s", SENDER: "s", SIGNATURE: "g", UNIX_FDS: "u"}

PROTOCOL_VERSION = 1
FIXED_HEADER_SIZE = 16
MAX_MESSAGE_SIZE = 1 << 27  # 128 MiB, the specification's maximum
MAX_MESSAGE_UNIX_FDS = 1 << 25  # DBUS_MAXIMUM_MESSAGE_UNIX_FDS, libdbus's cap on fds in one message
MAX_HEADER_FIELDS_LENGTH = MAX_ARRAY_LENGTH
# The header fields each type must carry, with the Header attribute each is read into.
REQUIRED_FIELDS = {
    METHOD_CALL: ((PATH, "path"), (MEMBER, "member")),
    SIGNAL: ((PATH, "path"), (INTERFACE, "interface"), (MEMBER, "member")),
    ERROR: ((ERROR_NAME, "error_name"), (REPLY_SERIAL, "reply_serial")),
    METHOD_RETURN: ((REPLY_SERIAL, "reply_serial"),),
}

__all__ = [
    "ALLOW_INTERACTIVE_AUTHORIZATION", "DESTINATION", "ERROR", "ERROR_NAME", "FIELD_NAMES", "FIELD_TYPES",
    "FIXED_HEADER_SIZE", "INTERFACE", "MAX_HEADER_FIELDS_LENGTH", "MAX_MESSAGE_SIZE", "MAX_MESSAGE_UNIX_FDS",
    "MEMBER", "METHOD_CALL", "METHOD_RETURN", "NO_AUTO_START", "NO_REPLY_EXPECTED", "PATH", "PROTOCOL_VERSION",
    "REPLY_SERIAL", "REQUIRED_FIELDS", "SENDER", "SIGNAL", "SIGNATURE", "TYPE_NAMES", "UNIX_FDS",
]
