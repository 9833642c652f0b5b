"""The daemon's bridge across configuration reloads: started with the bus, restarted when its settings change."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..bus.observers import BusObserver

if TYPE_CHECKING:
    from .settings import BridgeSettings
    from .bridge import Bridge
    from .nats_federation import Federation
    from ..bus.router import Bus

log = logging.getLogger("busd.bridge")


class BridgeManager(BusObserver):
    """The daemon's bridge, if its settings ask for one: started with the bus, replaced when a reload changes it.

    `settings_for(config)` turns a (reloaded) BusConfig into BridgeSettings, merging the command line.
    """

    def __init__(self, bus: "Bus", settings_for: Callable[[Any], BridgeSettings | None], config: Any):
        self.bus = bus
        self.settings_for = settings_for
        self.bridge: Bridge | Federation | None = None
        self._apply(settings_for(config))
        bus.add_observer(self)

    def _apply(self, settings: BridgeSettings | None) -> None:
        current = self.bridge.settings if self.bridge is not None else None
        if settings == current:
            return
        if self.bridge is not None:
            log.warning("bridge: configuration changed; restarting the bridge")
            self.bridge.stop()
            self.bridge = None
        if settings is not None and settings.is_federation:
            # Only a daemon in a federation loads it, and with it the NATS client (start time, RSS).
            from .nats_federation import Federation

            self.bridge = Federation(self.bus, settings)
            self.bridge.start()
        elif settings is not None:
            from .bridge import Bridge  # only a daemon that bridges loads it (start time)

            self.bridge = Bridge(self.bus, settings)
            self.bridge.start()

    def config_reloaded(self, new_settings: Any) -> None:
        self._apply(self.settings_for(new_settings.config))


__all__ = ["BridgeManager"]
