"""busd_client: use D-Bus services from Python as if they were local objects (signals to slots, methods, properties).

    import busd_client

    async with await busd_client.connect() as bus:          # the session bus
        example = await bus.proxy("dev.busd.Example1", "/dev/busd/Example1")
        print(await example.Greet("world"))
        await bus.connect_signal("dev.busd.Example1", "/dev/busd/Example1",
                                 "dev.busd.Example1", "Tick", on_tick)

Works on any D-Bus bus (busd, dbus-daemon, dbus-broker), on dbus-fast or
dbus-next.  Scripts without an event loop use `busd_client.connect_blocking()`.
"""

from .bus import DEFAULT_TIMEOUT, Bus, Subscription, connect, resolve_address, run_coroutine
from .dbus_types import (Byte, DBusType, Double, Int16, Int32, Int64, MessageInfo, ObjectPath, Signature,
                         UInt16, UInt32, UInt64, UnixFD, Variant, signature_of)
from .errors import DBusError
from .names import NameFlag, NameWatcher, ReleaseNameReply, RequestNameReply
from .proxy import Proxy
from .object_tree import Export
from .service import Interface, check_interface, dbus_property, method, signal
from .blocking import BlockingBus, connect_blocking
from .locks import NameLock, NameSemaphore
from .shared_buffer import SharedBuffer, UnsealedBufferError
from .shared_memory import PublishedMemory

__all__ = [
    "Bus", "BlockingBus", "Byte", "DBusError", "DBusType", "DEFAULT_TIMEOUT", "Double", "Export",
    "Int16", "Int32", "Int64", "Interface", "MessageInfo", "NameFlag", "NameLock", "NameSemaphore",
    "NameWatcher", "ObjectPath", "Proxy", "PublishedMemory", "ReleaseNameReply", "RequestNameReply",
    "SharedBuffer", "Signature", "Subscription", "UInt16", "UInt32", "UInt64", "UnixFD",
    "UnsealedBufferError", "Variant", "check_interface", "connect", "connect_blocking", "dbus_property",
    "method", "resolve_address", "run_coroutine", "signal", "signature_of",
]
