"""The message bus's own names: the driver's bus name, object path and interfaces, and the local ones.

Defined once here, for the daemon, the bridge, the SDK and busdctl alike.
"""

DRIVER_NAME = "org.freedesktop.DBus"
DRIVER_PATH = "/org/freedesktop/DBus"
DRIVER_INTERFACE = "org.freedesktop.DBus"
PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"
INTROSPECTABLE_INTERFACE = "org.freedesktop.DBus.Introspectable"
PEER_INTERFACE = "org.freedesktop.DBus.Peer"
MONITORING_INTERFACE = "org.freedesktop.DBus.Monitoring"
STATS_INTERFACE = "org.freedesktop.DBus.Debug.Stats"

# Reserved for a connection's own end: no message on the wire may use them.
LOCAL_PATH = "/org/freedesktop/DBus/Local"
LOCAL_INTERFACE = "org.freedesktop.DBus.Local"

__all__ = [
    "DRIVER_INTERFACE", "DRIVER_NAME", "DRIVER_PATH", "INTROSPECTABLE_INTERFACE", "LOCAL_INTERFACE", "LOCAL_PATH",
    "MONITORING_INTERFACE", "PEER_INTERFACE", "PROPERTIES_INTERFACE", "STATS_INTERFACE",
]
