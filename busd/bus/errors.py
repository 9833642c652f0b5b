"""The D-Bus error names the bus replies with, in one table."""

_PREFIX = "org.freedesktop.DBus.Error."

FAILED = _PREFIX + "Failed"
NO_MEMORY = _PREFIX + "NoMemory"
SERVICE_UNKNOWN = _PREFIX + "ServiceUnknown"
NAME_HAS_NO_OWNER = _PREFIX + "NameHasNoOwner"
NO_REPLY = _PREFIX + "NoReply"
ACCESS_DENIED = _PREFIX + "AccessDenied"
LIMITS_EXCEEDED = _PREFIX + "LimitsExceeded"
NOT_SUPPORTED = _PREFIX + "NotSupported"
INVALID_ARGS = _PREFIX + "InvalidArgs"
UNKNOWN_METHOD = _PREFIX + "UnknownMethod"
UNKNOWN_INTERFACE = _PREFIX + "UnknownInterface"
UNKNOWN_PROPERTY = _PREFIX + "UnknownProperty"
PROPERTY_READ_ONLY = _PREFIX + "PropertyReadOnly"
MATCH_RULE_NOT_FOUND = _PREFIX + "MatchRuleNotFound"
MATCH_RULE_INVALID = _PREFIX + "MatchRuleInvalid"
ADT_AUDIT_DATA_UNKNOWN = _PREFIX + "AdtAuditDataUnknown"
SELINUX_SECURITY_CONTEXT_UNKNOWN = _PREFIX + "SELinuxSecurityContextUnknown"
UNIX_PROCESS_ID_UNKNOWN = _PREFIX + "UnixProcessIdUnknown"
TIMEOUT = _PREFIX + "Timeout"
TIMED_OUT = _PREFIX + "TimedOut"  # a service start took longer than service_start_timeout
# Service activation (dbus-daemon's DBUS_ERROR_SPAWN_*)
SPAWN_EXEC_FAILED = _PREFIX + "Spawn.ExecFailed"
SPAWN_FORK_FAILED = _PREFIX + "Spawn.ForkFailed"
SPAWN_CHILD_EXITED = _PREFIX + "Spawn.ChildExited"
SPAWN_CHILD_SIGNALED = _PREFIX + "Spawn.ChildSignaled"
SPAWN_FAILED = _PREFIX + "Spawn.Failed"
SPAWN_SETUP_FAILED = _PREFIX + "Spawn.FailedToSetup"
SPAWN_CONFIG_INVALID = _PREFIX + "Spawn.ConfigInvalid"
SPAWN_SERVICE_INVALID = _PREFIX + "Spawn.ServiceNotValid"
SPAWN_SERVICE_NOT_FOUND = _PREFIX + "Spawn.ServiceNotFound"
SPAWN_PERMISSIONS_INVALID = _PREFIX + "Spawn.PermissionsInvalid"
SPAWN_FILE_INVALID = _PREFIX + "Spawn.FileInvalid"


class DriverError(Exception):
    """Raised by a driver method to reply with a D-Bus error."""

    def __init__(self, name: str, text: str):
        super().__init__(text)
        self.name = name
        self.text = text
