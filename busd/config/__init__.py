"""dbus-daemon XML configuration, read into pydantic models."""
