"""What /proc tells about a peer's process: ids, command line, cgroup units and capabilities."""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass, field

# Linux capability numbers, in order (capability.h).
CAPABILITY_NAMES = (
    "cap_chown", "cap_dac_override", "cap_dac_read_search", "cap_fowner", "cap_fsetid", "cap_kill",
    "cap_setgid", "cap_setuid", "cap_setpcap", "cap_linux_immutable", "cap_net_bind_service",
    "cap_net_broadcast", "cap_net_admin", "cap_net_raw", "cap_ipc_lock", "cap_ipc_owner",
    "cap_sys_module", "cap_sys_rawio", "cap_sys_chroot", "cap_sys_ptrace", "cap_sys_pacct",
    "cap_sys_admin", "cap_sys_boot", "cap_sys_nice", "cap_sys_resource", "cap_sys_time",
    "cap_sys_tty_config", "cap_mknod", "cap_lease", "cap_audit_write", "cap_audit_control",
    "cap_setfcap", "cap_mac_override", "cap_mac_admin", "cap_syslog", "cap_wake_alarm",
    "cap_block_suspend", "cap_audit_read", "cap_perfmon", "cap_bpf", "cap_checkpoint_restore",
)

# /proc/PID/status capability line -> the field busctl status prints it as.
CAPABILITY_FIELDS = {
    "CapEff": "EffectiveCapabilities",
    "CapPrm": "PermittedCapabilities",
    "CapInh": "InheritableCapabilities",
    "CapBnd": "BoundingCapabilities",
}

UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".swap", ".target", ".timer", ".path",
                 ".device", ".automount")
UNSET_AUDIT_ID = 4294967295  # (uint32)-1: no login uid / audit session


@dataclass
class CgroupUnits:
    """The systemd units a cgroup path places a process in; None where not known."""

    unit: str | None = None
    slice: str = "-.slice"
    user_unit: str | None = None
    user_slice: str | None = None
    session: str | None = None


@dataclass
class ProcessFacts:
    """A process as /proc shows it."""

    pid: int
    ppid: int | None = None
    tty: str | None = None
    uids: list[int] = field(default_factory=list)  # real, effective, saved, filesystem
    gids: list[int] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    comm: str | None = None
    exe: str | None = None
    cmdline: list[str] = field(default_factory=list)
    cgroup: str | None = None
    capabilities: dict[str, list[str]] = field(default_factory=dict)
    login_uid: int | None = None
    audit_session: int | None = None

    @property
    def units(self) -> CgroupUnits:
        return units_of_cgroup(self.cgroup) if self.cgroup is not None else CgroupUnits(slice="")


def _read(pid: int, name: str) -> str | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def _read_audit_id(pid: int, name: str) -> int | None:
    text = _read(pid, name)
    if text is None or not text.strip().isdigit():
        return None
    value = int(text.strip())
    return None if value == UNSET_AUDIT_ID else value


def capability_names(mask: int) -> list[str]:
    return [name for bit, name in enumerate(CAPABILITY_NAMES) if mask & (1 << bit)]


def tty_name(tty_nr: int) -> str | None:
    """The terminal a /proc/PID/stat tty_nr names, like 'pts/3'; None for no terminal."""
    if tty_nr == 0:
        return None
    major = (tty_nr >> 8) & 0xFFF
    minor = (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if 136 <= major <= 143:
        return f"pts/{(major - 136) * 256 + minor}"
    if major == 4 and minor < 64:
        return f"tty{minor}"
    try:
        with open(f"/sys/dev/char/{major}:{minor}/uevent") as f:
            for line in f:
                if line.startswith("DEVNAME="):
                    return line.strip().split("=", 1)[1]
    except OSError:
        pass
    return f"{major}:{minor}"


def units_of_cgroup(path: str) -> CgroupUnits:
    """The units of a unified-hierarchy cgroup path, read the way systemd reads them."""
    parts = [p for p in path.split("/") if p]
    units = CgroupUnits()
    rest = _take_unit(parts, units, "slice", "unit")
    if units.unit and re.fullmatch(r"user@\d+\.service", units.unit):
        # Inside a user manager: the next slice and unit belong to the user.
        user = CgroupUnits(slice="")
        _take_unit(rest, user, "slice", "unit")
        units.user_slice = user.slice or None
        units.user_unit = user.unit
    if units.unit:
        match = re.fullmatch(r"session-(.+)\.scope", units.unit)
        if match:
            units.session = match.group(1)
    return units


def _take_unit(parts: list[str], into: CgroupUnits, slice_field: str, unit_field: str) -> list[str]:
    """Walk slices, then take the first unit; returns the path parts below that unit."""
    for index, part in enumerate(parts):
        if part.endswith(".slice"):
            setattr(into, slice_field, part)
            continue
        if part.endswith(UNIT_SUFFIXES):
            setattr(into, unit_field, part)
            return parts[index + 1:]
        break
    return []


def read_process(pid: int) -> ProcessFacts | None:
    """What /proc knows about `pid`; None when the process is gone or hidden from us."""
    status = _read(pid, "status")
    if status is None:
        return None
    facts = ProcessFacts(pid=pid)
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    fields = {key: value.strip() for key, value in fields.items()}
    facts.ppid = int(fields["PPid"]) if fields.get("PPid", "").isdigit() else None
    facts.uids = [int(v) for v in fields.get("Uid", "").split()]
    facts.gids = [int(v) for v in fields.get("Gid", "").split()]
    facts.groups = [int(v) for v in fields.get("Groups", "").split()]
    for key, name in CAPABILITY_FIELDS.items():
        if key in fields:
            facts.capabilities[name] = capability_names(int(fields[key], 16))
    comm = _read(pid, "comm")
    facts.comm = comm.rstrip("\n") if comm is not None else None
    try:
        facts.exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        facts.exe = None
    cmdline = _read(pid, "cmdline")
    facts.cmdline = cmdline.rstrip("\0").split("\0") if cmdline else []
    stat = _read(pid, "stat")
    if stat is not None:
        after_comm = stat.rsplit(")", 1)[-1].split()
        if len(after_comm) > 4 and after_comm[4].lstrip("-").isdigit():
            facts.tty = tty_name(int(after_comm[4]))
    cgroup = _read(pid, "cgroup")
    if cgroup is not None:
        for line in cgroup.splitlines():
            if line.startswith("0::"):
                facts.cgroup = line[3:]
    facts.login_uid = _read_audit_id(pid, "loginuid")
    facts.audit_session = _read_audit_id(pid, "sessionid")
    return facts


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
