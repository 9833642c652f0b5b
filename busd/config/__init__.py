"""dbus-daemon XML configuration, read into frozen dataclasses."""

from .builtin import builtin_session_config, builtin_system_config
from .errors import ConfigError
from .loader import load_config, load_config_text
from .model import (
    BUSD_NAMESPACE, SESSION_LIMITS, BusConfig, ConfigNote, ExtensionElement, LimitSettings, Policy, PolicyRule,
    SelinuxAssociation, ServiceDir,
)
from .servicedirs import standard_session_servicedirs, standard_system_servicedirs

__all__ = [
    "BUSD_NAMESPACE", "BusConfig", "ConfigError", "ConfigNote", "ExtensionElement", "LimitSettings", "Policy",
    "PolicyRule", "SESSION_LIMITS", "SelinuxAssociation", "ServiceDir", "builtin_session_config",
    "builtin_system_config", "load_config", "load_config_text", "standard_session_servicedirs",
    "standard_system_servicedirs",
]
