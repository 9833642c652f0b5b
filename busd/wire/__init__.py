"""The D-Bus wire protocol: pure code, no I/O (bytes in, values and verdicts out)."""
