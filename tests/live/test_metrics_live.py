"""busd --metrics against known traffic: scraped over its unix socket and over HTTP, parsed with prometheus_client.

Clients connect first; one scrape; then a counted load (calls answered by a
service, signals to subscribers, a call to a name nobody owns, a call the
policy denies by a rule at a known line); a second scrape. The counters must
have moved by exactly that traffic, the scrapes themselves being no bus
traffic. Metrics are off unless asked for, and the daemon then never imports
prometheus_client.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus
from prometheus_client.parser import text_string_to_metric_families

from buses import SESSION_CONFIG, START_TIMEOUT, start_bus

pytestmark = pytest.mark.live

TIMEOUT = 30
CALLS, SIGNALS, SUBSCRIBERS = 25, 7, 3
SERVICE = "org.example.Metered"
DENY = '<policy context="default"><deny send_interface="org.example.Forbidden"/></policy>'


def scrape_unix(path: str) -> dict[tuple[str, tuple], float]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return parse(b"".join(chunks).decode())


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, for every sample of every family."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def _call(bus: MessageBus, **fields) -> Message:
    return await asyncio.wait_for(bus.call(Message(**fields)), TIMEOUT)


async def _driver(bus: MessageBus, member: str, signature: str = "", body: list | None = None) -> list:
    reply = await _call(bus, destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus", member=member, signature=signature, body=body or [])
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    return reply.body


async def traffic(address: str, scrape) -> tuple[dict, dict, dict]:
    """Run the counted load between two scrapes (and a third once every client has gone)."""
    service = await MessageBus(bus_address=address).connect()
    caller = await MessageBus(bus_address=address).connect()
    subscribers = [await MessageBus(bus_address=address).connect() for _ in range(SUBSCRIBERS)]
    received = asyncio.Queue()

    def answer(message: Message) -> Message | None:
        if message.message_type == MessageType.METHOD_CALL and message.member == "Ping":
            return Message.new_method_return(message, "s", ["pong"])
        return None

    service.add_message_handler(answer)
    await _driver(service, "RequestName", "su", [SERVICE, 4])
    for subscriber in subscribers:
        subscriber.add_message_handler(lambda m: received.put_nowait(m) if m.member == "Tick" else None)
        await _driver(subscriber, "AddMatch", "s", [f"type='signal',interface='{SERVICE}'"])
    before = await asyncio.to_thread(scrape)
    for _ in range(CALLS):
        reply = await _call(caller, destination=SERVICE, path="/", interface=SERVICE, member="Ping")
        assert reply.body == ["pong"]
    for _ in range(SIGNALS):
        await service.send(Message.new_signal("/", SERVICE, "Tick"))
    for _ in range(SIGNALS * SUBSCRIBERS):
        await asyncio.wait_for(received.get(), TIMEOUT)
    missing = await _call(caller, destination="org.example.Nobody", path="/", interface="org.example.X", member="Y")
    assert missing.error_name == "org.freedesktop.DBus.Error.ServiceUnknown"
    denied = await _call(caller, destination=SERVICE, path="/", interface="org.example.Forbidden", member="Y")
    assert denied.error_name == "org.freedesktop.DBus.Error.AccessDenied"
    after = await asyncio.to_thread(scrape)
    for bus in (service, caller, *subscribers):
        bus.disconnect()
    await _driver_gone(address)
    gone = await asyncio.to_thread(scrape)
    return before, after, gone


async def _driver_gone(address: str) -> None:
    """Wait until the bus has seen every other client leave: it has one connection, ours."""
    probe = await MessageBus(bus_address=address).connect()
    try:
        for _ in range(200):
            names = (await _driver(probe, "ListNames"))[0]
            if [n for n in names if n.startswith(":")] == [probe.unique_name]:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"clients still connected: {names}")
    finally:
        probe.disconnect()


def deny_line(config_path: str) -> int:
    with open(config_path) as f:
        return next(number for number, line in enumerate(f, 1) if "org.example.Forbidden" in line)


def test_counters_follow_known_traffic_on_the_unix_socket() -> None:
    with tempfile.TemporaryDirectory(prefix="busd-metrics-") as tmp:
        path = os.path.join(tmp, "metrics")
        bus = start_bus("busd", extra_config=DENY, args=(f"--metrics=unix:path={path}",))
        try:
            assert oct(os.stat(path).st_mode & 0o777) == "0o600"
            before, after, gone = asyncio.run(traffic(bus.address, lambda: scrape_unix(path)))
            config = os.path.join(bus.workdir, "bus.conf")
            rule = f"{config}:{deny_line(config)}"
        finally:
            bus.stop()
    received, sent = "busd_messages_received_total", "busd_messages_sent_total"
    # calls: CALLS answered, one to a name nobody owns, one the policy denies
    assert delta(before, after, received, type="method_call") == CALLS + 2
    assert delta(before, after, received, type="method_return") == CALLS
    assert delta(before, after, received, type="signal") == SIGNALS
    assert delta(before, after, sent, type="method_call") == CALLS
    assert delta(before, after, sent, type="method_return") == CALLS
    assert delta(before, after, sent, type="signal") == SIGNALS * SUBSCRIBERS
    assert delta(before, after, sent, type="error") == 2
    assert delta(before, after, "busd_errors_total", error="org.freedesktop.DBus.Error.ServiceUnknown") == 1
    assert delta(before, after, "busd_errors_total", error="org.freedesktop.DBus.Error.AccessDenied") == 1
    assert delta(before, after, "busd_policy_denials_total", side="send", rule=rule) == 1
    assert delta(before, after, "busd_reply_duration_seconds_count") == CALLS
    assert value(after, "busd_service_replies_total", service=SERVICE) == CALLS
    assert value(after, "busd_service_reply_seconds_mean", service=SERVICE) > 0
    assert delta(before, after, "busd_received_bytes_total") > 0 and delta(before, after, "busd_sent_bytes_total") > 0
    assert value(after, "busd_connections", state="active") == 2 + SUBSCRIBERS
    assert value(after, "busd_match_rules") == SUBSCRIBERS
    assert value(after, "busd_names", kind="well_known") == 1
    uid = str(os.getuid())
    assert value(after, "busd_user_used", uid=uid, line="MatchRules") == SUBSCRIBERS
    assert value(after, "busd_user_quota", uid=uid, line="MatchRules") > 0
    assert value(after, "process_resident_memory_bytes") > 0 and value(after, "process_open_fds") > 0
    # Every client left: the gauges go back, the counters keep what the departed connections did.
    assert value(gone, "busd_connections", state="active") == 0 and value(gone, "busd_match_rules") == 0
    for labels in ({"type": "method_call"}, {"type": "method_return"}, {"type": "signal"}):
        assert value(gone, received, **labels) >= value(after, received, **labels)
        assert value(gone, sent, **labels) >= value(after, sent, **labels)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_http_serves_prometheus_and_openmetrics() -> None:
    port = _free_port()
    bus = start_bus("busd", args=(f"--metrics=tcp:host=127.0.0.1,port={port}",))
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            samples = parse(response.read().decode())
        assert ("busd_connections", (("state", "active"),)) in samples
        request = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert response.read().decode().endswith("# EOF\n")
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=TIMEOUT)
        assert error.value.code == 404

        def fetch(_: int) -> dict:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                return parse(response.read().decode())

        with ThreadPoolExecutor(16) as pool:  # scrapes at once share one rendering; each gets it whole
            assert all(("busd_pending_replies", ()) in found for found in pool.map(fetch, range(32)))
    finally:
        bus.stop()


def _start(args: list[str], env: dict[str, str]) -> tuple[str, str, int | None]:
    """Run busd until it prints its address (or exits); (address, stderr so far, exit status or None)."""
    with tempfile.TemporaryDirectory(prefix="busd-metrics-") as tmp:
        config = os.path.join(tmp, "bus.conf")
        with open(config, "w") as f:
            f.write(SESSION_CONFIG.replace("{socket}", os.path.join(tmp, "bus")).replace("{extra}", ""))
        read_fd, write_fd = os.pipe()
        process = subprocess.Popen([sys.executable, "-m", "busd", f"--config-file={config}", "--nofork",
                                    f"--print-address={write_fd}", *args], pass_fds=(write_fd,), env=env,
                                   stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        os.close(write_fd)
        try:
            with os.fdopen(read_fd) as reader:
                ready = select.select([reader], [], [], START_TIMEOUT)[0]
                address = reader.readline().strip() if ready else ""
            if address:
                process.terminate()
            _, stderr = process.communicate(timeout=TIMEOUT)
            return address, stderr, process.returncode if not address else None
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_off_by_default_and_prometheus_client_not_imported() -> None:
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    address, stderr, _ = _start([], env)
    assert address
    imported = {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}
    assert "busd.daemon.cli" in imported  # (the import log works)
    assert not {name for name in imported if name.startswith(("prometheus_client", "busd.daemon.metrics"))}


def test_says_what_to_install_without_prometheus_client(tmp_path) -> None:
    (tmp_path / "prometheus_client.py").write_text("raise ImportError('not installed here')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    address, stderr, status = _start([f"--metrics=unix:path={tmp_path}/metrics"], env)
    assert not address and status == 1
    assert "pip install 'busd[metrics]'" in stderr


def test_bridge_state_is_scraped() -> None:
    upstream = start_bus("busd")
    with tempfile.TemporaryDirectory(prefix="busd-metrics-") as tmp:
        path = os.path.join(tmp, "metrics")
        bus = start_bus("busd", args=(f"--metrics=unix:path={path}", f"--upstream={upstream.address}",
                                      "--import=org.example.Up"))
        try:
            deadline = time.monotonic() + TIMEOUT
            while True:  # the bridge connects in the background: wait for the scrape to say so
                samples = scrape_unix(path)
                connected = [value for (name, _), value in samples.items() if name == "busd_bridge_connected"]
                if connected == [1.0] or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert connected == [1.0]
            assert [v for (name, _), v in samples.items() if name == "busd_bridge_connects_total"][0] >= 1
            assert value(samples, "busd_bridge_names", direction="imported") == 0
        finally:
            bus.stop()
            upstream.stop()


def test_full_queues_are_counted_by_limit() -> None:
    """A call bigger than the recipient's max_outgoing_bytes is refused (LimitsExceeded); broadcasts to a
    subscriber that never reads are dropped once its queue is full. Both show in the counters."""
    from busclient import RawClient

    limit = 65536
    with tempfile.TemporaryDirectory(prefix="busd-metrics-") as tmp:
        path = os.path.join(tmp, "metrics")
        bus = start_bus("busd", extra_config=f'<limit name="max_outgoing_bytes">{limit}</limit>',
                        args=(f"--metrics=unix:path={path}",))
        stuck = sender = None
        try:
            stuck = RawClient(bus.address)  # subscribes, then never reads again
            stuck.call_driver("AddMatch", "s", ["type='signal',interface='org.example.Flood'"])
            sender = RawClient(bus.address)
            refused = sender.call_wait(stuck.unique_name, "/", "org.example.X", "Big", "ay", [b"x" * (2 * limit)])
            assert refused.error_name == "org.freedesktop.DBus.Error.LimitsExceeded"
            for _ in range(64):  # 2 MiB of signals: past the kernel's socket buffer and the bus's queue
                sender.emit("/", "org.example.Flood", "Wave", "ay", [b"y" * 32768])
            sender.driver_value("GetId")  # the bus has handled every signal before it answers this
            samples = scrape_unix(path)
        finally:
            for client in (stuck, sender):
                if client is not None:
                    client.close()
            bus.stop()
    assert value(samples, "busd_queue_full_refusals_total", limit="max_outgoing_bytes") == 1
    assert value(samples, "busd_errors_total", error="org.freedesktop.DBus.Error.LimitsExceeded") == 1
    assert value(samples, "busd_broadcasts_dropped_total") > 0
