"""busd: a D-Bus message bus daemon written in Python."""

__version__ = "0.1.0"
