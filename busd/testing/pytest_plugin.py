"""pytest plugin: `busd_session`, a private busd session bus for one test, with a connected busd_client bus.

    def test_greeter(busd_session):
        start_my_service()                               # connects to "the session bus": this one
        proxy = busd_session.bus.proxy("dev.example.Greeter", "/dev/example/Greeter")
        assert proxy.Greet("world") == "Hello, world"

While the test runs, DBUS_SESSION_BUS_ADDRESS names the private bus, so code
under test that connects to the session bus finds it. `busd_session.bus` is a
blocking busd_client connection (made on first use); async tests use
`await busd_session.connect()`. `add_service()` writes a .service file into the
bus's service directory, for activation tests. The bus stops after the test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import pytest

from .run_session import PrivateBus, start_private_bus

if TYPE_CHECKING:
    import busd_client

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{services}</servicedir>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  {extra}
</busconfig>
"""


class BusdSession:
    """A private session bus for one test: its address, a client connection, its service directory."""

    def __init__(self, private: PrivateBus, services_dir: str):
        self.private = private
        self.address = private.address
        self.services_dir = services_dir
        self._bus: busd_client.BlockingBus | None = None

    @property
    def bus(self) -> "busd_client.BlockingBus":
        """A blocking busd_client connection to this bus, made on first use and closed after the test."""
        if self._bus is None:
            import busd_client
            self._bus = busd_client.connect_blocking(self.address)
        return self._bus

    async def connect(self, **options: Any) -> "busd_client.Bus":
        """A new async busd_client connection on the running event loop; the test closes it."""
        import busd_client
        return await busd_client.connect(self.address, **options)

    def environ(self) -> dict[str, str]:
        """os.environ for a subprocess that should use this bus as its session bus."""
        return self.private.environ()

    def add_service(self, name: str, argv: Sequence[str]) -> str:
        """Make `name` activatable: starting it runs `argv`. Returns the .service file's path."""
        command = " ".join("'" + arg.replace("'", "'\\''") + "'" for arg in argv)
        path = os.path.join(self.services_dir, name + ".service")
        with open(path, "w") as f:
            f.write(f"[D-BUS Service]\nName={name}\nExec={command}\n")
        return path

    def close(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None


@contextmanager
def private_session(extra_config: str = "") -> Iterator[BusdSession]:
    """Start a private busd (socket and service directory in a fresh temporary directory), stop it after."""
    # Under the system temporary directory, not pytest's tmp_path: a unix socket path must stay short.
    workdir = tempfile.mkdtemp(prefix="busd-pytest-")
    services = os.path.join(workdir, "services")
    os.mkdir(services)
    config = os.path.join(workdir, "bus.conf")
    with open(config, "w") as f:
        f.write(CONFIG.format(socket=os.path.join(workdir, "bus"), services=services, extra=extra_config))
    try:
        private = start_private_bus(config)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    private.cleanup.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
    session = BusdSession(private, services)
    try:
        yield session
    finally:
        try:
            session.close()
        finally:
            private.stop()  # stops the daemon and removes workdir, even if closing the client failed


@pytest.fixture
def busd_session(monkeypatch: pytest.MonkeyPatch) -> Iterator[BusdSession]:
    """A private busd session bus for this test; DBUS_SESSION_BUS_ADDRESS points at it meanwhile."""
    with private_session() as session:
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", session.address)
        for name in ("DBUS_STARTER_ADDRESS", "DBUS_STARTER_BUS_TYPE"):
            monkeypatch.delenv(name, raising=False)
        yield session
