"""The launcher side: turns configuration into the declared objects the bus takes, and starts services.

Nothing in busd/bus reads a file, a configuration or a process; what it needs
is handed over from here (policy rules, limits, an activator) when the daemon
is assembled.
"""
