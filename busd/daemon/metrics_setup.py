"""Whether and where busd serves metrics: --metrics and <busd:metrics address="..."/>, bound before forking.

Kept apart from metrics.py so that a daemon without metrics never imports
prometheus_client (start time and RSS), and one asked for them without it
installed says what to install.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .assembly import Daemon

MISSING = ("metrics need the prometheus_client package, which is not installed: "
           "pip install 'busd[metrics]' (or pip install prometheus_client)")


class MetricsSetupError(Exception):
    """Metrics were asked for and cannot be served; the message says why and what to do."""


def metrics_addresses(given: Sequence[str], extensions: Sequence[Any]) -> list[str]:
    """--metrics addresses, then those of every <busd:metrics address="..."/> of the configuration."""
    found = list(given)
    for element in extensions:
        if element.name == "metrics":
            address = element.attributes.get("address")
            if not address:
                raise MetricsSetupError(f"{element.file}:{element.line}: <busd:metrics> needs address=\"...\" "
                                        "(unix:path=FILE or tcp:host=127.0.0.1,port=N)")
            found.append(address)
    return found


def setup_metrics(daemon: Daemon, addresses: list[str]) -> None:
    """Bind the metrics addresses and give the daemon its Metrics (served once its bus runs)."""
    if not addresses:
        return
    try:
        from .metrics import Metrics, bind_metrics
    except ImportError:
        raise MetricsSetupError(MISSING) from None
    from ..transport.listeners import ListenError
    try:
        listeners = bind_metrics(addresses)
    except ListenError as exc:
        raise MetricsSetupError(f"cannot serve metrics: {exc}") from None
    daemon.metrics = Metrics(listeners, bridge_state=lambda: bridge_state(daemon),
                             audit_mode=lambda: daemon.audit_mode)


def bridge_state(daemon: Daemon) -> dict[str, Any]:
    """The bridge's (or federation's) dev.busd.Bridge1 properties, unwrapped ({} without one)."""
    manager = daemon.bridge
    bridge = manager.bridge if manager is not None else None
    if bridge is None:
        return {}
    return {key: variant.value for key, variant in bridge.properties().items()}


__all__ = ["MISSING", "MetricsSetupError", "metrics_addresses", "setup_metrics"]
