"""The bridge: chosen names, their calls and their signals crossing between this bus and an upstream bus.

Theory. The bridge is one client connection to the upstream bus (an
UpstreamLink, with its own serials and reply table) plus virtual peers on the
local bus, so local routing needs no special case:

- Each upstream connection that owns an imported name, or that calls an exported
  one, appears here as a *mirror*: a virtual peer with a unique name of its own
  that owns exactly the imported names its upstream twin owns. GetNameOwner,
  NameOwnerChanged and sender matching therefore tell services apart as they do
  upstream, and a local service sees an upstream caller leave when it leaves.
- A local call to a mirror reaches Mirror.queue(); the bridge sends it upstream
  under a fresh upstream serial, remembering (mirror, caller, local serial) under
  that serial. The upstream reply is injected back with bus.receive() from the
  mirror, so the bus's own reply tracking checks it and delivers it. Upstream
  calls to exported names go the other way: injected from the caller's mirror
  under a fresh local serial, answered through Mirror.queue().
- Signals: local match rules that could match a signal from an imported name
  become upstream match rules, counted, and removed with the last local rule
  that needs them; an upstream signal is re-emitted here only if its sender owns
  an imported name, and local match rules decide who gets it. Signals from local
  owners of exported names reach the bridge's own virtual peer (its `home`)
  through local rules sender='<exported name>', and are emitted upstream.
- Nothing else crosses: upstream names outside --import do not exist here, local
  names outside --export do not exist upstream (ServiceUnknown), and broadcasts
  of other peers are dropped on both sides. A mirror that owns no imported name
  (an upstream caller's) takes only replies to its calls and what local owners
  of exported names send it; other local peers get ServiceUnknown.
- Mirrors have no unix credentials (mirror.py says why): local policy treats an
  upstream peer as it treats a peer nobody can name, never as busd's own user.

When the upstream bus goes away every mirror leaves (imported names vanish,
waiting callers get NoReply from the bus), busd serves on, and the bridge
reconnects with backoff and restores imports, exports and subscriptions.

Modules, one job each: settings (BridgeSettings from the command line and
<busd:bridge>), link (the client connection to the upstream bus), readdress
(rewriting a header for the other bus), mirror (the virtual peers on the local
bus), subscriptions (local match rules as counted upstream rules), bridge (the
orchestration) and manager (the daemon's bridge across configuration reloads).
The daemon shell imports this package; the package never imports the shell.
This file imports nothing: the settings' names below are imported on first use, so a
daemon with no bridge configured loads only the manager (start time; the manager
imports the bridge when one is asked for, the daemon the settings when a command-line
option or a <busd:bridge> element asks for a bridge).
Import the others from their modules: busd.bridge.bridge.Bridge, busd.bridge.mirror.Mirror.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .settings import BridgeConfigError, BridgeSettings, NamePattern, bridge_settings

__all__ = ["BridgeConfigError", "BridgeSettings", "NamePattern", "bridge_settings"]


def __getattr__(name: str) -> Any:
    """The settings' names, imported on first use: a daemon with no bridge imports none of the package but
    the manager (busd.bridge.settings and the address and name checks it needs were a tenth of a start)."""
    if name in __all__:
        from . import settings

        return vars(settings)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
