"""busdctl: a busctl-style command line for introspecting and debugging any D-Bus bus."""

__version__ = "0.1.0"
