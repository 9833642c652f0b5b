"""Start real bus daemons for live tests: busd and the reference dbus-daemon.

Each bus runs in its own temporary directory on a unix socket; the address is
read from --print-address, so a test waits for the bus to be ready instead of
sleeping.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

SESSION_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  {extra}
</busconfig>
"""


@dataclass
class RunningBus:
    """A bus daemon process started for a test."""

    kind: str
    address: str
    process: subprocess.Popen
    workdir: str
    env: dict[str, str] = field(default_factory=dict)

    def client_env(self) -> dict[str, str]:
        """The environment a client process needs to use this bus as its session bus."""
        env = dict(os.environ)
        env["DBUS_SESSION_BUS_ADDRESS"] = self.address
        return env

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def busd_available() -> bool:
    try:
        import busd.launch  # noqa: F401  (the daemon with its config loader)
    except ImportError:
        return False
    return True


def _daemon_command(kind: str) -> list[str]:
    if kind == "dbus-daemon":
        return ["dbus-daemon"]
    if kind == "busd":
        return [sys.executable, "-m", "busd"]
    raise ValueError(f"unknown bus kind {kind!r}")


def start_bus(kind: str, extra_config: str = "", config_text: str | None = None,
              args: tuple[str, ...] = ()) -> RunningBus:
    """Start a bus daemon of `kind` ("busd" or "dbus-daemon") and wait until it listens."""
    workdir = tempfile.mkdtemp(prefix=f"{kind}-test-")
    socket_path = os.path.join(workdir, "bus")
    config_path = os.path.join(workdir, "bus.conf")
    text = config_text if config_text is not None else SESSION_CONFIG
    with open(config_path, "w") as f:
        f.write(text.replace("{socket}", socket_path).replace("{extra}", extra_config))
    read_fd, write_fd = os.pipe()
    cmd = _daemon_command(kind) + [
        f"--config-file={config_path}", "--nofork", "--nopidfile",
        f"--print-address={write_fd}", *args,
    ]
    process = subprocess.Popen(cmd, pass_fds=(write_fd,), stdin=subprocess.DEVNULL)
    os.close(write_fd)
    with os.fdopen(read_fd) as reader:
        address = reader.readline().strip()
    if not address:
        process.kill()
        process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"{kind} exited without printing its address (status {process.returncode})")
    return RunningBus(kind=kind, address=address, process=process, workdir=workdir)
