"""Live tests with real client libraries: a dbus-next service called by dbus-next, gdbus, busctl, dbus-send, jeepney."""

# No `from __future__ import annotations` here: dbus-next reads D-Bus types from the annotations.

import asyncio
import os

from busclient import DBUS, DBUS_PATH, next_bus, run_async, shared_bus  # noqa: F401  (fixture)

NAME = "org.example.Calc"
PATH = "/org/example/Calc"


def make_service():
    from dbus_next import DBusError
    from dbus_next.service import ServiceInterface, dbus_property, method, signal

    class Calculator(ServiceInterface):
        def __init__(self):
            super().__init__(NAME)
            self.label = "calc"

        @method()
        def Add(self, a: "i", b: "i") -> "i":
            return a + b

        @method()
        def Echo(self, data: "ay") -> "ay":
            return data

        @method()
        def ReadFd(self, fd: "h") -> "s":
            return os.read(fd, 100).decode()

        @method()
        def Fail(self):
            raise DBusError("org.example.Error.Failed", "as asked")

        @dbus_property()
        def Label(self) -> "s":
            return self.label

        @Label.setter
        def Label(self, value: "s"):
            self.label = value
            self.Changed(value)

        @signal()
        def Changed(self, value) -> "s":
            return value

    return Calculator()


async def serve(bus_info, bus_name: str, negotiate_unix_fd: bool = False):
    """A dbus-next connection owning `bus_name` (one per test: the bus is shared) and serving PATH."""
    from dbus_next import RequestNameReply
    bus = await next_bus(bus_info, negotiate_unix_fd)
    service = make_service()
    bus.export(PATH, service)
    assert await bus.request_name(bus_name) == RequestNameReply.PRIMARY_OWNER
    return bus, service


async def calculator_proxy(bus_info, bus_name: str, negotiate_unix_fd: bool = False):
    """A served calculator and a second dbus-next connection with a proxy to it: (server, client, proxy)."""
    server, _ = await serve(bus_info, bus_name, negotiate_unix_fd)
    client = await next_bus(bus_info, negotiate_unix_fd)
    introspection = await client.introspect(bus_name, PATH)
    return server, client, client.get_proxy_object(bus_name, PATH, introspection).get_interface(NAME)


async def close(bus) -> None:
    bus.disconnect()
    await bus.wait_for_disconnect()
    bus._stream.close()  # dbus-next 0.2.3 leaves its socket open after disconnecting
    bus._sock.close()


async def tool(bus_info, *argv: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(*argv, env=bus_info.client_env(), stdin=asyncio.subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


def test_dbus_next_client_and_service(shared_bus):
    async def scenario():
        from dbus_next import DBusError
        server, client, calc = await calculator_proxy(shared_bus, f"{NAME}.ByNext")
        assert await calc.call_add(2, 3) == 5
        try:
            await calc.call_fail()
        except DBusError as error:
            assert (error.type, error.text) == ("org.example.Error.Failed", "as asked")
        else:
            raise AssertionError("Fail did not fail")
        changed = asyncio.get_running_loop().create_future()
        calc.on_changed(lambda value: changed.done() or changed.set_result(value))
        await calc.set_label("renamed")
        assert await changed == "renamed"
        assert await calc.get_label() == "renamed"
        await close(client)
        await close(server)
    run_async(scenario())


def test_dbus_next_large_message(shared_bus):
    async def scenario():
        server, client, calc = await calculator_proxy(shared_bus, f"{NAME}.Large")
        payload = os.urandom(1 << 20) * 12
        assert await calc.call_echo(payload) == payload
        await close(client)
        await close(server)
    run_async(scenario(), timeout=60)


def test_dbus_next_passes_fds(shared_bus):
    async def scenario():
        server, client, calc = await calculator_proxy(shared_bus, f"{NAME}.Fds", negotiate_unix_fd=True)
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, b"sent as an fd")
            assert await calc.call_read_fd(read_end) == "sent as an fd"
        finally:
            os.close(read_end)
            os.close(write_end)
        await close(client)
        await close(server)
    run_async(scenario())


def test_command_line_clients_call_a_dbus_next_service(shared_bus):
    bus_name = f"{NAME}.ByTools"

    async def scenario():
        server, service = await serve(shared_bus, bus_name)
        assert await tool(shared_bus, "gdbus", "call", "--session", "--dest", bus_name, "--object-path", PATH,
                          "--method", f"{NAME}.Add", "2", "3") == (0, "(5,)\n", "")
        assert await tool(shared_bus, "busctl", "--user", "call", bus_name, PATH, NAME, "Add", "ii", "20", "22") == \
            (0, "i 42\n", "")
        code, out, _ = await tool(shared_bus, "dbus-send", "--session", "--print-reply", f"--dest={bus_name}", PATH,
                                  f"{NAME}.Add", "int32:-1", "int32:1")
        assert code == 0 and out.splitlines()[1].strip() == "int32 0"
        code, _, err = await tool(shared_bus, "gdbus", "call", "--session", "--dest", bus_name, "--object-path", PATH,
                                  "--method", f"{NAME}.Fail")
        assert code == 1 and "GDBus.Error:org.example.Error.Failed: as asked" in err
        assert await tool(shared_bus, "busctl", "--user", "set-property", bus_name, PATH, NAME, "Label", "s",
                          "from busctl") == (0, "", "")
        assert service.label == "from busctl"
        assert await tool(shared_bus, "busctl", "--user", "get-property", bus_name, PATH, NAME, "Label") == \
            (0, 's "from busctl"\n', "")
        await close(server)
    run_async(scenario())


def test_a_dbus_send_signal_reaches_a_dbus_next_match(shared_bus):
    async def scenario():
        from dbus_next import Message
        listener = await next_bus(shared_bus)
        got = asyncio.get_running_loop().create_future()

        def handler(message):
            if message.member == "FromDbusSend" and not got.done():
                got.set_result((message.interface, message.body))
        listener.add_message_handler(handler)
        await listener.call(Message(destination=DBUS, path=DBUS_PATH, interface=DBUS, member="AddMatch",
                                    signature="s", body=["type='signal',interface='org.example.Cli'"]))
        code, _, _ = await tool(shared_bus, "dbus-send", "--session", "--type=signal", "/org/example",
                                "org.example.Cli.FromDbusSend", "string:hello", "uint32:7")
        assert code == 0
        assert await got == ("org.example.Cli", ["hello", 7])
        await close(listener)
    run_async(scenario())


def test_jeepney_client(shared_bus):
    from jeepney import DBusAddress, new_method_call
    from jeepney.io.blocking import open_dbus_connection
    connection = open_dbus_connection(bus=shared_bus.address)
    try:
        driver = DBusAddress(DBUS_PATH, bus_name=DBUS, interface=DBUS)
        names = connection.send_and_get_reply(new_method_call(driver, "ListNames")).body[0]
        assert DBUS in names and connection.unique_name in names
        owner = connection.send_and_get_reply(new_method_call(driver, "GetNameOwner", "s", (DBUS,))).body
        assert owner == (DBUS,)
    finally:
        connection.close()
