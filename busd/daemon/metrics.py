"""busd --metrics: the bus's state in the Prometheus/OpenMetrics text format, on a unix socket or over HTTP.

Imported only when metrics are enabled (prometheus_client is the `metrics`
extra). A scrape copies numbers out of the bus on its loop (metrics_state.py),
then a worker thread builds the exposition with prometheus_client from that
copy, so a scrape never holds the loop for the formatting and costs nothing
while nobody scrapes. Addresses: `unix:path=FILE` (or `unix:abstract=NAME`)
writes the text to whoever connects and closes, as dbus-broker's metrics
socket; `tcp:host=127.0.0.1,port=N` answers HTTP `GET /metrics` (OpenMetrics
when the scraper's Accept asks for it).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as prometheus_exposition
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric)
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.process_collector import ProcessCollector

from ..bus.replies import ReplyTimes, measure_reply_times
from ..transport.listeners import Listener, ListenError, listen
from .metrics_state import TOP_SERVICES, TOP_USERS, TYPE_LABELS, Departures, LogCounts, MetricsSnapshot, take_snapshot

if TYPE_CHECKING:
    from ..bus.router import Bus

log = logging.getLogger("busd.metrics")

HTTP_REQUEST_LIMIT = 8192  # bytes of request line and headers read before answering 431
HTTP_READ_TIMEOUT = 10.0  # seconds a scraper has to send its request


class SnapshotCollector:
    """A prometheus_client collector that yields the families of one MetricsSnapshot."""

    def __init__(self, snapshot: MetricsSnapshot):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        yield _gauge("busd_connections", "Connections by state: incomplete (no Hello yet), active, monitor",
                     ["state"], {(k,): v for k, v in s.connections.items()})
        traffic = s.traffic
        yield _counter("busd_messages_received", "Messages received from connections, by message type",
                       ["type"], _by_type(traffic.received))
        yield _counter("busd_messages_sent", "Messages queued to connections (deliveries: a broadcast counts "
                       "once per recipient; the bus's own replies and signals included), by message type",
                       ["type"], _by_type(traffic.sent))
        yield _counter("busd_received_bytes", "Bytes read from connections (authentication included)", [],
                       {(): traffic.bytes_read})
        yield _counter("busd_sent_bytes", "Bytes written to connections", [], {(): traffic.bytes_written})
        yield _counter("busd_errors", "Errors the bus itself answered or refused messages with, by error name "
                       "(ServiceUnknown and NameHasNoOwner: no such name; LimitsExceeded; AccessDenied; ...)",
                       ["error"], {(k,): v for k, v in s.errors.items()})
        yield _counter("busd_policy_denials", "Messages denied by the policy, by side and deciding rule "
                       "(file:line; 'default' when no rule matched)", ["side", "rule"], s.denials)
        yield _counter("busd_policy_audit_would_deny", "Messages audit mode let through that the policy denies, "
                       "by side and deciding rule", ["side", "rule"], s.audited)
        yield _counter("busd_queue_full_refusals", "Unicast messages refused because the recipient's queue "
                       "(or its user's) was full, by the limit reached", ["limit"],
                       {(k,): v for k, v in s.refusals.items()})
        yield _counter("busd_limit_episodes", "Times a connection or a user reached a queue limit or quota, "
                       "by limit (counted once until its queue drains)", ["limit"],
                       {(k,): v for k, v in s.episodes.items()})
        yield _counter("busd_broadcasts_dropped", "Broadcasts not queued to a subscriber whose queue was full",
                       [], {(): s.broadcasts_dropped})
        yield _counter("busd_backpressure_holds", "Times a sender stopped being read because a recipient's "
                       "queue passed the back-pressure mark", [], {(): s.backpressure_held})
        yield _counter("busd_connections_dropped", "Connections dropped for a protocol, authentication or "
                       "quota reason", [], {(): s.dropped_connections})
        yield from self._ledger()
        yield _gauge("busd_match_rules", "Match rules of all connections", [], {(): s.match_rules})
        yield _gauge("busd_names", "Names with an owner: unique, well_known", ["kind"],
                     {(k,): v for k, v in s.names.items()})
        yield _gauge("busd_pending_replies", "Calls waiting for their reply", [], {(): s.pending_replies})
        if s.reply_buckets is not None:
            yield _histogram("busd_reply_duration_seconds", "Call to reply through the bus: from the call being "
                             "routed to its reply being routed", s.reply_buckets, s.reply_sum)
            slow = GaugeMetricFamily("busd_service_reply_seconds_mean", f"Mean call-to-reply time of the "
                                     f"{TOP_SERVICES} slowest-answering connections, by their first "
                                     "well-known name (or unique name)", labels=["service"])
            calls = CounterMetricFamily("busd_service_replies", "Calls answered by the connections of "
                                        "busd_service_reply_seconds_mean", labels=["service"])
            for name, mean, count in s.slowest:
                slow.add_metric([name], mean)
                calls.add_metric([name], count)
            yield slow
            yield calls
        yield _counter("busd_activations", "Service activations by name and outcome (activated, or the "
                       "error: TimedOut, ChildExited, ...)", ["name", "outcome"], s.activations)
        if s.activation_buckets is not None:
            yield _histogram("busd_activation_duration_seconds", "Time from a service's start to its name "
                             "being owned (successful activations)", s.activation_buckets, s.activation_sum)
        if s.bridge:
            yield from self._bridge()
        yield _gauge("busd_policy_audit_mode", "1 while the policy only logs what it would deny", [],
                     {(): int(s.audit_mode)})

    def _bridge(self) -> Iterator[Metric]:
        bridge = self.snapshot.bridge
        upstream = (str(bridge.get("Upstream", "")),)
        yield _gauge("busd_bridge_connected", "1 while the bridge's (or federation's) upstream link is up",
                     ["upstream"], {upstream: int(bool(bridge.get("Connected")))})
        yield _counter("busd_bridge_connects", "Times the bridge connected to its upstream", ["upstream"],
                       {upstream: int(bridge.get("Connects", 0))})
        yield _gauge("busd_bridge_names", "Names crossing the bridge now: imported (owned here by stand-ins), "
                     "exported (owned upstream)", ["direction"],
                     {("imported",): len(bridge.get("Imported", {})), ("exported",): len(bridge.get("Exported", {}))})
        nodes = bridge.get("Nodes", {})
        yield _gauge("busd_federation_node_up", "Federation nodes, 1 while heard within the TTL", ["node"],
                     {(node,): int(bool(facts[0])) for node, facts in nodes.items()})
        yield _gauge("busd_federation_rtt_seconds", "Round-trip time to each federation node (when measured)",
                     ["node"], {(node,): facts[1] / 1000 for node, facts in nodes.items() if facts[1] >= 0})

    def _ledger(self) -> Iterator[Metric]:
        users = self.snapshot.users
        help_text = (f"the per-user ledger (at most the {TOP_USERS} uids using most of their quotas), by uid and line "
                     "(OutgoingBytes, OutgoingFDs, MatchRules, Names, PendingReplies, ...)")
        for index, (name, what) in enumerate((("used", "In use now"), ("peak", "Peak"), ("quota", "Quota"))):
            yield _gauge(f"busd_user_{name}", f"{what}: {help_text}", ["uid", "line"],
                         {(uid, line): values[index] for uid, lines in users.items()
                          for line, values in lines.items()})


def _by_type(counts: list[int]) -> dict[tuple[str], int]:
    found: dict[tuple[str], int] = {(label,): 0 for label in TYPE_LABELS.values()}
    for index, count in enumerate(counts):
        label = (TYPE_LABELS.get(index, "unknown"),)
        found[label] = found.get(label, 0) + count
    return found


def _gauge(name: str, text: str, labels: list[str], values: dict) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family


def _counter(name: str, text: str, labels: list[str], values: dict) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family


def _histogram(name: str, text: str, buckets: list[tuple[str, int]], total: float) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, text)
    family.add_metric([], buckets, total)
    return family


def render(snapshot: MetricsSnapshot, openmetrics: bool = False) -> bytes:
    """The exposition text of `snapshot` and of this process (RSS, CPU, open fds); runs in a worker thread."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    ProcessCollector(registry=registry)
    if openmetrics:
        return openmetrics_exposition.generate_latest(registry)
    return prometheus_exposition.generate_latest(registry)


class Metrics:
    """The metrics of one bus: what counts between scrapes, and the sockets scrapers reach."""

    def __init__(self, listeners: list[Listener], bridge_state: Callable[[], dict[str, Any]] | None = None,
                 audit_mode: Callable[[], bool] | None = None):
        self.listeners = listeners
        self.bridge_state = bridge_state or dict
        self.audit_mode = audit_mode or (lambda: False)
        self.logs = LogCounts()
        self.departures = Departures()
        self.times: ReplyTimes | None = None
        self.bus: Bus | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._rendering: dict[bool, asyncio.Future] = {}  # the render in progress, by format

    async def start(self, bus: Bus) -> None:
        """Count from now on and serve every listener (on the bus's loop)."""
        self.bus = bus
        self.times = measure_reply_times()
        bus.add_observer(self.departures)
        _count_logs(self.logs)
        for listener in self.listeners:
            if listener.unix:
                server = await asyncio.start_unix_server(self._dump, sock=listener.sock)
            else:
                server = await asyncio.start_server(self._http, sock=listener.sock)
            self._servers.append(server)
            log.info("metrics on %s%s", listener.address, "" if listener.unix else " (HTTP GET /metrics)")

    async def text(self, openmetrics: bool = False) -> bytes:
        """The exposition; scrapes that arrive while one is being rendered share it (so a crowd of scrapers
        costs the loop one snapshot, not one each)."""
        pending = self._rendering.get(openmetrics)
        if pending is None:
            snapshot = take_snapshot(self.bus, self.departures, self.logs, self.times, self.bridge_state(),
                                     self.audit_mode())
            pending = asyncio.get_running_loop().run_in_executor(None, render, snapshot, openmetrics)
            self._rendering[openmetrics] = pending
            pending.add_done_callback(lambda _: self._rendering.pop(openmetrics, None))
        return await asyncio.shield(pending)

    async def _dump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """unix: the text to whoever connects, then close (as dbus-broker's metrics socket)."""
        try:
            writer.write(await self.text())
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """tcp: one HTTP/1.0-style exchange per connection: GET /metrics, or an error status."""
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HTTP_READ_TIMEOUT)
            except asyncio.LimitOverrunError:
                return await _respond(writer, 431, b"request header too large\n")
            except (asyncio.IncompleteReadError, asyncio.TimeoutError):
                return None
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split()
            if len(parts) != 3 or len(head) > HTTP_REQUEST_LIMIT:
                return await _respond(writer, 400, b"bad request\n")
            method, target = parts[0], parts[1].split("?", 1)[0]
            if target not in ("/metrics", "/"):
                return await _respond(writer, 404, b"busd serves its metrics at /metrics\n")
            if method not in ("GET", "HEAD"):
                return await _respond(writer, 405, b"only GET /metrics\n")
            accept = next((line.split(":", 1)[1] for line in lines[1:] if line.lower().startswith("accept:")), "")
            openmetrics = "application/openmetrics-text" in accept
            body = await self.text(openmetrics)
            kind = openmetrics_exposition.CONTENT_TYPE_LATEST if openmetrics \
                else prometheus_exposition.CONTENT_TYPE_LATEST
            await _respond(writer, 200, body if method == "GET" else b"", kind, len(body))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        for server in self._servers:
            server.close()
        for listener in self.listeners:
            listener.close()
        self._servers = []


async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes,
                   kind: str = "text/plain; charset=utf-8", length: int | None = None) -> None:
    reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
               431: "Request Header Fields Too Large"}
    writer.write(f"HTTP/1.1 {status} {reasons[status]}\r\nContent-Type: {kind}\r\n"
                 f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n"
                 .encode("ascii") + body)
    await writer.drain()


def _count_logs(counts: LogCounts) -> None:
    """Attach `counts` to busd's logger; the lines it counts are made even when the log level hides them
    (the output handlers keep the chosen level)."""
    logger = logging.getLogger("busd")
    if logger.getEffectiveLevel() > logging.INFO:
        for handler in logger.handlers:
            if handler.level == logging.NOTSET:
                handler.setLevel(logger.getEffectiveLevel())
        logger.setLevel(logging.INFO)
    logger.addHandler(counts)


def bind_metrics(addresses: list[str]) -> list[Listener]:
    """Bind every metrics address (before forking, so a mistake reaches the caller); ListenError says why."""
    listeners: list[Listener] = []
    try:
        for address in addresses:
            if not address.startswith(("unix:", "tcp:")):
                raise ListenError(f"metrics address {address!r}: give unix:path=FILE or "
                                  f"tcp:host=127.0.0.1,port=N")
            found = listen(address)
            for listener in found:
                if listener.cleanup_path:
                    os.chmod(listener.cleanup_path, 0o600)  # the bus's own user (and root) may read them
            listeners.extend(found)
    except ListenError:
        for listener in listeners:
            listener.close()
        raise
    return listeners


__all__ = ["Metrics", "SnapshotCollector", "bind_metrics", "render"]
