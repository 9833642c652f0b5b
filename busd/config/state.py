"""What one configuration file and its includes contribute, and how an included file merges in (dbus-daemon's rules)."""

from __future__ import annotations


from .model import BusConfig, ConfigNote, ExtensionElement, LimitSettings, Policy, SelinuxAssociation, ServiceDir
from .servicedirs import add_servicedir
from ..wire.records import field, record


@record
class ConfigState:
    """The configuration read so far from one file and its includes."""

    limits: dict[str, int] = field(default_factory=lambda: LimitSettings().as_dict())
    type: str | None = None
    user: str | None = None
    pidfile: str | None = None
    servicehelper: str | None = None
    fork: bool = False
    keep_umask: bool = False
    syslog: bool = False
    allow_anonymous: bool = False
    listen: list[str] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    servicedirs: list[ServiceDir] = field(default_factory=list)
    includedirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    policies: list[Policy] = field(default_factory=list)
    apparmor_mode: str | None = None
    selinux: list[SelinuxAssociation] = field(default_factory=list)
    extensions: list[ExtensionElement] = field(default_factory=list)
    notes: list[ConfigNote] = field(default_factory=list)

    def for_included_file(self) -> ConfigState:
        """A fresh state for an included file; only the limits carry over."""
        return ConfigState(limits=dict(self.limits))

    def merge(self, included: ConfigState) -> None:
        """Take in an included file's state, as dbus-daemon's merge_included does."""
        for name in ("type", "user", "pidfile", "servicehelper", "apparmor_mode"):
            value = getattr(included, name)
            if value is not None:
                setattr(self, name, value)
        # <syslog/> is deliberately not carried out of included files: dbus-daemon doesn't.
        self.fork |= included.fork
        self.keep_umask |= included.keep_umask
        self.allow_anonymous |= included.allow_anonymous
        self.limits = included.limits
        for name in ("listen", "auth", "includedirs", "files", "policies", "selinux", "extensions", "notes"):
            getattr(self, name).extend(getattr(included, name))
        for servicedir in included.servicedirs:
            add_servicedir(self.servicedirs, servicedir)

    def to_config(self) -> BusConfig:
        return BusConfig(
            type=self.type, user=self.user, fork=self.fork, keep_umask=self.keep_umask, syslog=self.syslog,
            allow_anonymous=self.allow_anonymous, pidfile=self.pidfile, listen=tuple(self.listen),
            auth=tuple(self.auth), servicedirs=tuple(self.servicedirs), servicehelper=self.servicehelper,
            includedirs=tuple(self.includedirs), files=tuple(self.files), limits=LimitSettings(**self.limits),
            policies=tuple(self.policies), apparmor_mode=self.apparmor_mode, selinux=tuple(self.selinux),
            extensions=tuple(self.extensions), notes=tuple(self.notes),
        )
