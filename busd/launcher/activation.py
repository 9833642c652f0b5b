"""Service activation, the launcher side: finding, spawning and asking systemd to start services.

The bus side (bus/activation.py's `PendingStarts`) holds the messages and the
timers and asks this side, its `Activator`, to start a name. This side decides
whether a name is activatable (the `ServiceCatalog`, kept in step with the
directories by a `DirectoryWatcher`), starts it (a `ServiceProcess`, the
servicehelper, or a request to systemd) and reports a failed start back. Rules
and error texts follow dbus-daemon's bus/activation.c.
"""

from __future__ import annotations

import logging
import os
import subprocess
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ..bus import errors
from ..bus.activation import SYSTEMD_NAME, ActivationError, PendingStarts, SystemdRequest
from ..bus.observers import BusObserver
from ..config.model import ServiceDir
from ..wire.message import METHOD_CALL, NO_REPLY_EXPECTED, SIGNAL, Header, build_message, read_body
from ..wire.names import is_valid_error_name
from ..wire.wellknown import DRIVER_NAME, DRIVER_PATH
from .dirwatch import DirectoryWatcher
from .services import ServiceCatalog, ServiceFile, split_command_line
from .spawn import ServiceProcess, describe_exit

if TYPE_CHECKING:
    from ..bus.peer import Peer
    from ..bus.router import Bus

log = logging.getLogger("busd.activation")

SYSTEMD_ACTIVATOR = "org.freedesktop.systemd1.Activator"

# The launch helper's exit codes (dbus-daemon's activation-exit-codes.h) and what the caller sees.
SERVICEHELPER_EXIT_ERRORS: dict[int, tuple[str, str]] = {
    2: (errors.NO_MEMORY, "Launcher could not run (out of memory)"),
    3: (errors.SPAWN_CONFIG_INVALID, "Invalid configuration (missing or empty <user>?)"),
    4: (errors.SPAWN_SETUP_FAILED, "Failed to setup environment correctly"),
    5: (errors.SPAWN_SERVICE_INVALID, "Bus name is not valid or missing"),
    6: (errors.SPAWN_SERVICE_NOT_FOUND, "Bus name not found in system service directory"),
    7: (errors.SPAWN_PERMISSIONS_INVALID, "The permission of the setuid helper is not correct"),
    8: (errors.SPAWN_PERMISSIONS_INVALID, "The service file is incorrect or does not have all required attributes"),
    9: (errors.SPAWN_EXEC_FAILED, "Cannot launch daemon, file not found or permissions invalid"),
    10: (errors.INVALID_ARGS, "Invalid arguments to command line"),
    11: (errors.SPAWN_CHILD_SIGNALED, "Launched child was signaled, it probably crashed"),
}

# Variables systemd sets for the daemon itself, not for the services it starts (as dbus-daemon drops them).
DAEMON_ONLY_VARIABLES = ("JOURNAL_STREAM", "LISTEN_FDNAMES", "LISTEN_FDS", "LISTEN_PID", "NOTIFY_SOCKET",
                         "INVOCATION_ID", "WATCHDOG_USEC", "WATCHDOG_PID")
BUS_ADDRESS_VARIABLES = {"session": "DBUS_SESSION_BUS_ADDRESS", "system": "DBUS_SYSTEM_BUS_ADDRESS"}


class Launch:
    """How the launcher is starting one name: its .service file, and the process or systemd unit."""

    __slots__ = ("service", "process", "systemd_unit")

    def __init__(self, service: ServiceFile | None):  # None: systemd itself, which needs no file
        self.service = service
        self.process: ServiceProcess | None = None
        self.systemd_unit: str | None = None


class Activation(BusObserver):
    """Starts services for a bus (its Activator) and hears systemd's ActivationFailure (a BusObserver)."""

    def __init__(self, bus: "Bus", servicedirs: Sequence[ServiceDir], address: str, *,
                 systemd_activation: bool = False, servicehelper: str | None = None,
                 environ: Mapping[str, str] | None = None, watch: bool = True):
        self.bus = bus
        self.address = address
        self.systemd_activation = systemd_activation
        self.servicehelper = servicehelper
        self.environment = {k: v for k, v in (os.environ if environ is None else environ).items()
                            if k not in DAEMON_ONLY_VARIABLES}
        self.catalog = ServiceCatalog(servicedirs)
        self.starts = PendingStarts(bus, self)  # the bus side: held messages and timers
        self.launches: dict[str, Launch] = {}  # by name, the latest start of each
        self.processes: set[ServiceProcess] = set()
        self._watch = watch
        self.watcher: DirectoryWatcher | None = None
        self.catalog.scan()
        self._start_watching()

    def install(self) -> "Activation":
        """Attach to the bus: the driver holds messages in `starts`, which hears name changes; this
        hears the signals addressed to the bus."""
        bus = self.bus
        driver = bus.driver
        driver.attach_activation(self.starts)
        bus.add_observer(self.starts)
        bus.add_observer(self)
        if self.systemd_activation and "SystemdActivation" not in driver.features:
            driver.features.append("SystemdActivation")
        return self

    def _start_watching(self) -> None:
        if self._watch:
            self.watcher = DirectoryWatcher(self.bus.loop, self.catalog.watched_paths(), self.directories_changed)

    # ------------------------------------------------------------ the Activator port

    def activatable_names(self) -> list[str]:
        return self.catalog.names()

    def is_activatable(self, name: str, *, auto_start: bool = True) -> bool:
        return self._find(name) is not None or auto_start and self._is_systemd_itself(name)

    def start(self, name: str, requester: "Peer | None") -> None:
        # The bus's own requests to systemd wait for it to connect: nothing is spawned for them.
        launch = self.launches[name] = Launch(self._find(name) if requester is not None else None)
        self._launch(name, launch, requester)

    def cancel(self, name: str) -> None:
        launch = self.launches.pop(name, None)
        if launch is not None and launch.process is not None:
            launch.process.kill()

    def environment_updated(self, env: dict[str, str]) -> None:
        self.forward_environment(env)

    # ------------------------------------------------------------ configuration

    def reload(self, servicedirs: Sequence[ServiceDir], servicehelper: str | None = None) -> None:
        """ReloadConfig or SIGHUP: new directories, every file read again; pending starts carry on."""
        self.servicehelper = servicehelper
        self.catalog.dirs = list(servicedirs)
        if self.watcher is not None:
            self.watcher.close()
        self._start_watching()
        self.directories_changed()

    def directories_changed(self) -> None:
        self.catalog.scan()
        # dbus-daemon announces every reload, whether or not the names changed.
        self.bus.outbox.emit_signal("ActivatableServicesChanged", "", [])

    def close(self) -> None:
        self.starts.close()
        self.launches.clear()
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        for process in self.processes:
            process.detach()
        self.processes.clear()

    # ------------------------------------------------------------ bus events

    def driver_signal(self, peer: "Peer", buf: bytes, h: Header) -> None:
        """A signal addressed to the bus: systemd's ActivationFailure is the only one that means anything."""
        if h.interface != SYSTEMD_ACTIVATOR or h.member != "ActivationFailure":
            return
        if self.bus.registry.owner(SYSTEMD_NAME) is not peer:
            log.warning("ignoring ActivationFailure from %s (uid %s), which is not the systemd activator",
                        peer.unique_name, peer.credentials.uid)
            return
        if h.signature != "sss":
            log.warning("ignoring ActivationFailure with signature %r (expected 'sss')", h.signature)
            return
        unit, error, text = read_body(buf, h)
        if not is_valid_error_name(error):
            error = errors.SPAWN_FAILED
        log.warning("activation via systemd failed for unit '%s': %s", unit, text)
        for name in [name for name, launch in self.launches.items()
                     if launch.systemd_unit == unit and self.starts.waiting_for(name)]:
            self.starts.fail(name, error, text)

    # ------------------------------------------------------------ starting

    def _is_systemd_itself(self, name: str) -> bool:
        # With systemd activation, systemd needs no .service file: the bus waits for it to connect.
        return self.systemd_activation and name == SYSTEMD_NAME

    def _find(self, name: str) -> ServiceFile | None:
        return self.catalog.find(name)

    def _launch(self, name: str, launch: Launch, requester: "Peer | None") -> None:
        service = launch.service
        who = _describe_peer(requester)
        if self.systemd_activation:
            if service is None:
                log.info("waiting for systemd to connect (%s)", name)
                return
            if service.systemd_service:
                self._ask_systemd(name, launch, service.systemd_service, who)
                return
        if self.servicehelper:
            if not service.user:
                # The trailing newline is dbus-daemon's, kept so the texts match byte for byte.
                raise ActivationError(errors.SPAWN_FILE_INVALID, "Cannot do system-bus activation with no user\n")
            argv = split_command_line(self.servicehelper) + [name]
            log.info("Activating service name='%s' requested by %s (using servicehelper)", name, who)
        else:
            argv = split_command_line(service.exec)
            log.info("Activating service name='%s' requested by %s", name, who)
        launch.process = self._spawn(name, argv, self._user_switch(service))

    def _user_switch(self, service: ServiceFile) -> dict[str, Any]:
        """Popen arguments that run a system service as its User=, when the bus can (it runs as root)."""
        if self.bus.bus_type != "system" or not service.user or self.servicehelper or os.geteuid() != 0:
            return {}
        import pwd
        try:
            entry = pwd.getpwnam(service.user)
        except KeyError:
            raise ActivationError(errors.SPAWN_SETUP_FAILED,
                                  f"User \"{service.user}\" named in {service.path} does not exist") from None
        return {"user": entry.pw_uid, "group": entry.pw_gid,
                "extra_groups": os.getgrouplist(service.user, entry.pw_gid)}

    def spawn_environment(self) -> dict[str, str]:
        """What an activated process sees: the daemon's environment, UpdateActivationEnvironment, the bus."""
        env = dict(self.environment)
        env.update(self.bus.driver.activation_environment)
        bus_type = self.bus.bus_type
        env["DBUS_STARTER_ADDRESS"] = self.address
        env["DBUS_STARTER_BUS_TYPE"] = bus_type
        if bus_type in BUS_ADDRESS_VARIABLES:
            env[BUS_ADDRESS_VARIABLES[bus_type]] = self.address
        return env

    def _spawn(self, name: str, argv: list[str], popen_args: dict[str, Any]) -> ServiceProcess:
        if not argv:
            raise ActivationError(errors.SPAWN_EXEC_FAILED,
                                  f"Failed to execute program {name}: No such file or directory")
        try:
            process = ServiceProcess(self.bus.loop, name, argv, self.spawn_environment(), self._process_exited,
                                     **popen_args)
        except OSError as exc:
            raise ActivationError(errors.SPAWN_EXEC_FAILED,
                                  f"Failed to execute program {name}: {exc.strerror or exc}") from None
        except subprocess.SubprocessError as exc:
            raise ActivationError(errors.SPAWN_SETUP_FAILED, f"Failed to set up {name}: {exc}") from None
        self.processes.add(process)
        log.info("started %s as pid %d: %s", name, process.pid, " ".join(argv))
        return process

    def _ask_systemd(self, name: str, launch: Launch, unit: str, who: str) -> None:
        launch.systemd_unit = unit
        if self.bus.registry.owner(SYSTEMD_NAME) is not None:
            log.info("Activating via systemd: service name='%s' unit='%s' requested by %s", name, unit, who)
            self.send_activation_request(unit)
        else:
            log.info("Activating systemd to hand-off: service name='%s' unit='%s' requested by %s",
                     name, unit, who)
            message = self._activation_request(unit)
            self.bus.outbox.send(None, message)  # monitors see it now, systemd when it is here
            self.starts.hold(SYSTEMD_NAME, SystemdRequest(message), None)

    def send_activation_request(self, unit: str) -> None:
        """org.freedesktop.systemd1.Activator.ActivationRequest(unit), a signal from the bus to systemd."""
        bus = self.bus
        systemd = bus.registry.owner(SYSTEMD_NAME)
        if systemd is None:
            return
        bus.outbox.send(systemd, self._activation_request(unit))

    def forward_environment(self, env: dict[str, str]) -> None:
        """UpdateActivationEnvironment with systemd activation: systemd's Manager.SetEnvironment too.

        Like dbus-daemon, the call is addressed to org.freedesktop.systemd1 and waits for
        systemd to connect if it is not on the bus yet.
        """
        if not self.systemd_activation:
            return
        bus = self.bus
        systemd = bus.registry.owner(SYSTEMD_NAME)
        message = build_message(METHOD_CALL, bus.outbox.next_serial(), path="/org/freedesktop/systemd1",
                                interface="org.freedesktop.systemd1.Manager", member="SetEnvironment",
                                destination=systemd.unique_name if systemd is not None else SYSTEMD_NAME,
                                sender=DRIVER_NAME, signature="as", body=[[f"{k}={v}" for k, v in env.items()]],
                                flags=NO_REPLY_EXPECTED)
        if systemd is not None:
            bus.outbox.send(systemd, message)
        else:
            bus.outbox.send(None, message)
            self.starts.hold(SYSTEMD_NAME, SystemdRequest(message), None)

    def _activation_request(self, unit: str) -> bytes:
        return build_message(SIGNAL, self.bus.outbox.next_serial(), path=DRIVER_PATH, interface=SYSTEMD_ACTIVATOR,
                             member="ActivationRequest", destination=SYSTEMD_NAME, sender=DRIVER_NAME,
                             signature="s", body=[unit])

    # ------------------------------------------------------------ outcomes

    def _process_exited(self, process: ServiceProcess) -> None:
        self.processes.discard(process)
        returncode = process.returncode
        name = process.service_name
        launch = self.launches.get(name)
        if launch is None or launch.process is not process or not self.starts.waiting_for(name):
            log.info("service %s (pid %d) %s", name, process.pid, describe_exit(returncode))
            return
        if returncode == 0:
            # A program that "daemonizes" exits 0 before its child owns the name: keep waiting, as dbus-daemon.
            log.info("service %s (pid %d) exited with status 0 before owning its name; still waiting",
                     name, process.pid)
            launch.process = None
            return
        if self.servicehelper and returncode > 0:
            error, text = SERVICEHELPER_EXIT_ERRORS.get(
                returncode, (errors.SPAWN_CHILD_EXITED, f"Launch helper exited with unknown return code {returncode}"))
        elif returncode < 0:
            error, text = errors.SPAWN_CHILD_SIGNALED, f"Process {name} received signal {-returncode}"
        else:
            error, text = errors.SPAWN_CHILD_EXITED, f"Process {name} exited with status {returncode}"
        # Other names started by the same program fail with it (dbus-daemon does the same).
        command = launch.service.exec if launch.service else None
        for other in [other for other, started in self.launches.items()
                      if other != name and started.service is not None and started.service.exec == command
                      and self.starts.waiting_for(other)]:
            self.starts.fail(other, error, text)
        self.starts.fail(name, error, text)


def _describe_peer(peer: "Peer | None") -> str:
    if peer is None:
        return "the bus"
    creds = peer.credentials
    return f"'{peer.unique_name}' (uid={creds.uid} pid={creds.pid})"


def install_activation(bus: "Bus", servicedirs: Sequence[ServiceDir], servicehelper: str | None, address: str,
                       systemd_activation: bool = False) -> Activation:
    """Activation for a daemon's bus, attached to it."""
    create_transient_servicedirs(servicedirs)
    return Activation(bus, servicedirs, address, systemd_activation=systemd_activation,
                      servicehelper=servicehelper).install()


def create_transient_servicedirs(directories: Iterable[ServiceDir]) -> None:
    """Create $XDG_RUNTIME_DIR/dbus-1/services and the like, as dbus-daemon does at startup,
    so that programs can drop transient .service files there and ask for a reload."""
    for directory in directories:
        if directory.transient and not os.path.isdir(directory.path):
            try:
                os.makedirs(directory.path, mode=0o700, exist_ok=True)
            except OSError as exc:
                log.warning("cannot create transient service directory %s: %s", directory.path,
                            exc.strerror or exc)


__all__ = ["Activation", "Launch", "create_transient_servicedirs", "install_activation"]
