"""busd: a D-Bus message bus daemon written in Python."""

from ._extensions import honour_switch

__version__ = "0.1.0"

honour_switch()  # before any module of the per-message path is imported
