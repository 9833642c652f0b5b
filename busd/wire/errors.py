"""Errors raised by the wire protocol code."""


class ProtocolError(Exception):
    """The peer broke the D-Bus protocol; the connection must be dropped. `reason` says how."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SignatureError(ProtocolError, ValueError):
    """A type signature is not valid; the reason names the offending position."""


class MarshalError(ValueError):
    """A Python value does not fit the D-Bus type it is being marshalled as (caller's mistake)."""
