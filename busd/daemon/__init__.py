"""The daemon: the command line (cli), process life (process), config -> settings (settings), the wiring of
bus, transport, launcher and bridge (assembly), systemd notification (notify) and logging (logs)."""
