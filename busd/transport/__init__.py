"""Transports: how a peer's bytes reach the bus (busd.transport.stream) and leave it."""
