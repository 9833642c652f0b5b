"""busd reads the address a real dbus-daemon prints as dbus-daemon means it."""

from __future__ import annotations

import pytest
import os
from busd.wire.address import parse_address, parse_addresses


@pytest.mark.live
def test_parses_the_address_dbus_daemon_prints(reference_bus) -> None:
    (address,) = parse_addresses(reference_bus.address)
    assert address.transport == "unix"
    assert os.path.exists(address.params["path"])
    assert address.guid is not None and len(address.guid) == 32
    assert parse_address(address.format()) == address
