"""`busdctl web` in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium) loads the page of a private busd with two services and a chattering client.

The test waits (WebDriverWait, never a sleep) for the map to show the services and an edge for the
client's calls, calls a method from the object browser and reads its reply, finds the calls and their
replies in the sequence diagram and its pcapng export, sees the numbers table, and checks that
requests without the token (HTTP and WebSocket) are refused. It saves a screenshot of the map in its
temporary directory (and to $BUSD_WEB_SCREENSHOT when set: docs/web.png was made so).

Run as a script (`python3 test_web_live.py ADDRESS`), it is the chattering client: it calls
org.example.Demo's Add and asks org.example.Demo2 to broadcast its Changed signal, five times a second.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from buses import RunningBus, helper_env, start_bus, stop_process
from test_busdctl_service import (SAFETY_TIMEOUT, DemoService, LineReader, busdctl_command, interrupt, run,
                                  start_demo)

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                       reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"),
]

PAGE_TIMEOUT = 60.0  # seconds; only a guard against a hung browser on a loaded machine, never an assertion
PCAPNG_SECTION_HEADER = b"\x0a\x0d\x0d\x0a"
# A bus whose policy keeps everyone from becoming a monitor.
REFUSE_MONITORING = """<policy context="mandatory">
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>"""


# The kernel's name of a process this Python starts (python3; python in a virtual environment)
PYTHON_NAME = os.path.basename(sys.executable)[:15]


def _chatter(address: str) -> None:
    from dbus_next import Message
    from dbus_next.aio import MessageBus

    async def main() -> None:
        bus = await MessageBus(bus_address=address).connect()
        print(f"READY {bus.unique_name}", flush=True)
        while True:
            await bus.call(Message(destination="org.example.Demo", path="/org/example/Demo",
                                   interface="org.example.Demo", member="Add", signature="ii", body=[1, 2]))
            await bus.call(Message(destination="org.example.Demo2", path="/org/example/Demo",
                                   interface="org.example.Demo", member="EmitChanged", signature="s",
                                   body=["tick"]))
            await asyncio.sleep(0.2)

    asyncio.run(main())


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=SAFETY_TIMEOUT) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


async def _websocket_status(url: str) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=SAFETY_TIMEOUT)):
                return 101
        except aiohttp.WSServerHandshakeError as error:
            return error.status


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1440,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    yield driver
    driver.quit()


def _start(kind: str, extra_config: str = "") -> RunningBus:
    if kind != "dbus-broker":
        return start_bus(kind, extra_config)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # its launcher lives there
    from broker import start_broker, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return start_broker(extra_config)


@contextmanager
def _busy_bus(kind: str, extra_config: str = "") -> Iterator[tuple[RunningBus, list[DemoService], str]]:
    """A bus with org.example.Demo and org.example.Demo2, and a client calling them five times a second."""
    bus = _start(kind, extra_config)
    services: list[DemoService] = []
    chatter = None
    try:
        services += [start_demo(bus.address), start_demo(bus.address, "org.example.Demo2")]
        chatter = subprocess.Popen([sys.executable, __file__, bus.address], stdout=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL, env=helper_env())
        client = LineReader(chatter.stdout).expect(lambda line: line.startswith("READY "), "the client").split()[1]
        yield bus, services, client
    finally:
        if chatter is not None:
            stop_process(chatter)
        for service in services:
            service.stop()
        bus.stop()


@contextmanager
def _web(bus: RunningBus) -> Iterator[tuple[str, LineReader]]:
    """`busdctl web` on `bus`: the URL it printed, and its standard error."""
    process = subprocess.Popen(busdctl_command(bus.address, "web"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL)
    try:
        url = LineReader(process.stdout).expect(lambda line: line.startswith("http://"), "the page's URL").strip()
        yield url, LineReader(process.stderr)
    finally:
        assert interrupt(process) == 0


@pytest.fixture
def web_page(browser):
    """The page of a busy busd; `busdctl web` is stopped while the browser still shows it (as Ctrl-C would be)."""
    with _busy_bus("busd") as (bus, services, client), _web(bus) as (url, _):
        yield url, services, client


async def _updates(url: str, until: Callable[[dict[str, Any]], bool]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The page's first update (hello) and the first one for which `until` holds, read as the page reads them."""
    import aiohttp

    parts = urlsplit(url)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://{parts.netloc}/events?{parts.query}") as socket:
            hello = await socket.receive_json(timeout=PAGE_TIMEOUT)
            update = hello
            while not until(update):
                update = await socket.receive_json(timeout=PAGE_TIMEOUT)
            return hello, update


def _has_edge(source: str, target: str) -> Callable[[dict[str, Any]], bool]:
    return lambda update: any((e["from"], e["to"], e["kind"]) == (source, target, "call")
                              for e in update.get("edges", []))


@pytest.mark.parametrize("kind", ["dbus-daemon", "dbus-broker"])
def test_other_buses_traffic_reaches_the_page(kind):
    """The page is not busd's alone: on dbus-daemon and dbus-broker too, it sees the peers and the client's calls."""
    with _busy_bus(kind) as (bus, (demo, demo2), client), _web(bus) as (url, _):
        hello, update = asyncio.run(_updates(url, _has_edge(client, demo.unique_name)))
    assert hello["monitoring"] == ""
    names = {peer["id"]: peer["names"] for peer in update["peers"]}
    assert names[demo.unique_name] == [demo.name] and names[demo2.unique_name] == [demo2.name]
    assert any(m["member"] == "Add" and m["type"] == "call" for m in update["messages"])


def test_bridge_stand_ins_are_told_apart():
    """On a busd bridged to another bus, the local stand-in of a service over there is drawn as one,
    with the connection it stands for; so is the bridge's own peer, which lives in the bus process."""
    from test_bridge_live import Bridged

    up = start_bus("dbus-daemon")
    bridged = None
    demo = None
    try:
        bridged = Bridged(up, imports=("org.example.*",), exports=())
        demo = start_demo(up.address)
        seen = run(busdctl_command(bridged.local.address, "wait", "org.example.Demo", "--timeout=30"))
        assert seen.returncode == 0, seen.stderr
        stand_in = seen.stdout.strip()

        def drawn(update: dict[str, Any]) -> bool:
            return any(p["id"] == stand_in and p["kind"] == "bridge" for p in update["peers"])

        with _web(bridged.local) as (url, _):
            _, update = asyncio.run(_updates(url, drawn))
        peers = {peer["id"]: peer for peer in update["peers"]}
        assert peers[stand_in]["stands_for"] == demo.unique_name
        assert peers[stand_in]["names"] == ["org.example.Demo"]
        home = [p for p in peers.values() if p["kind"] == "bridge" and p["id"] != stand_in]
        assert [p["pid"] for p in home] == [bridged.local.pid]
    finally:
        if demo is not None:
            demo.stop()
        if bridged is not None:
            bridged.stop()
        up.stop()


def test_a_bus_that_refuses_monitoring_is_named_plainly():
    """Without BecomeMonitor the page still shows who is on the bus, and says why it shows no traffic."""
    with _busy_bus("busd", REFUSE_MONITORING) as (bus, (demo, _), client), _web(bus) as (url, errors):
        errors.expect(lambda line: "does not let this user monitor it" in line, "the refusal explained")
        hello, _ = asyncio.run(_updates(url, lambda update: True))
    assert "org.freedesktop.DBus.Error.AccessDenied" in hello["monitoring"]
    assert "no traffic" in hello["monitoring"]
    assert {demo.unique_name, client} <= {peer["id"] for peer in hello["peers"]}
    assert hello["edges"] == [] and hello["messages"] == []


def test_the_page_shows_the_bus_live_and_calls_a_method(web_page, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    url, (demo, demo2), client = web_page
    wait = WebDriverWait(browser, PAGE_TIMEOUT)
    browser.get(url)

    # The map: both services by name, and an edge for the client's calls to Demo.
    # (The map is redrawn as traffic changes: the test waits for elements by what they show.)
    for service in (demo, demo2):
        wait.until(ready.presence_of_element_located(
            (By.CSS_SELECTOR, f'#map-svg g.node[data-peer="{service.unique_name}"][data-names~="{service.name}"]')))
    wait.until(ready.presence_of_element_located(
        (By.CSS_SELECTOR, f'#map-svg path.edge[data-kind="call"][data-from="{client}"][data-to="{demo.unique_name}"]')))
    wait.until(ready.presence_of_element_located(
        (By.CSS_SELECTOR, '#map-svg g.node.driver[data-peer="org.freedesktop.DBus"][data-kind="driver"]')))
    assert browser.find_element(By.ID, "status").get_attribute("data-monitoring") == "ok"
    # Demo2's Changed signals go to everyone: a broadcast halo on its node.
    wait.until(ready.presence_of_element_located(
        (By.CSS_SELECTOR, f'#map-svg g.node[data-peer="{demo2.unique_name}"] circle.halo')))
    # The numbers colour the nodes by how full they are (busd reports queues and its per-user ledger).
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, f'#map-svg g.node[data-peer="{client}"][data-fill]')))
    browser.save_screenshot(str(tmp_path / "web.png"))
    if os.environ.get("BUSD_WEB_SCREENSHOT"):
        shutil.copy(tmp_path / "web.png", os.environ["BUSD_WEB_SCREENSHOT"])
    assert (tmp_path / "web.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The browser: name -> object -> method, called with busdctl call's argument syntax.
    browser.find_element(By.CSS_SELECTOR, '#tabs button[data-tab="browser"]').click()
    wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, '#services li[data-service="org.example.Demo"]'))).click()
    wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, '#paths li[data-path="/org/example/Demo"]'))).click()
    add = wait.until(ready.presence_of_element_located(
        (By.CSS_SELECTOR, 'details[data-interface="org.example.Demo"] .member[data-member="Add"]')))
    add.find_element(By.CSS_SELECTOR, "input.args").send_keys("20 22")
    add.find_element(By.CSS_SELECTOR, "button.call").click()
    wait.until(lambda _: add.find_element(By.CSS_SELECTOR, ".result").get_attribute("data-state") != "pending")
    result = add.find_element(By.CSS_SELECTOR, ".result")
    assert (result.get_attribute("data-state"), result.text) == ("ok", "i 42")
    fail = browser.find_element(By.CSS_SELECTOR, 'details[data-interface="org.example.Demo"] .member[data-member="Fail"]')
    fail.find_element(By.CSS_SELECTOR, "button.call").click()
    wait.until(lambda _: fail.find_element(By.CSS_SELECTOR, ".result").get_attribute("data-state") == "error")
    assert "org.example.Demo.Error.Broken: broken on purpose" in fail.find_element(By.CSS_SELECTOR, ".result").text

    # The sequence: the client's calls to Add paired with their replies; the filter keeps only them.
    browser.find_element(By.CSS_SELECTOR, '#tabs button[data-tab="sequence"]').click()
    browser.find_element(By.ID, "filter").send_keys("Add")
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, '#sequence-svg g.msg[data-type="return"]')))
    browser.find_element(By.ID, "pause").click()  # the diagram holds still while it is read
    assert browser.find_element(By.ID, "pause").get_attribute("data-paused") == "true"
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#sequence-svg g.msg')].map(g => [g.dataset.type, g.dataset.member]);")
    assert {member for _, member in shown} == {"Add"} and {kind for kind, _ in shown} == {"call", "return"}
    assert browser.find_elements(By.CSS_SELECTOR, "#sequence-svg line.pair")  # calls paired with their replies
    with urllib.request.urlopen(browser.find_element(By.ID, "export").get_attribute("href"),
                                timeout=SAFETY_TIMEOUT) as answer:
        capture = answer.read()
    assert capture[:4] == PCAPNG_SECTION_HEADER and b"Add" in capture and b"EmitChanged" not in capture

    # The numbers: busdctl top's table, one row per connection, and busd's per-user ledger.
    browser.find_element(By.CSS_SELECTOR, '#tabs button[data-tab="numbers"]').click()
    wait.until(ready.presence_of_element_located(
        (By.CSS_SELECTOR, f'#numbers-table tr[data-connection="{demo.unique_name}"]')))
    row = browser.execute_script("return [...document.querySelectorAll('#numbers-table tr')].find("
                                 "tr => tr.dataset.connection === arguments[0]).textContent;", demo.unique_name)
    assert "org.example.Demo" in row and PYTHON_NAME in row
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, f'#ledger-table tr[data-uid="{os.getuid()}"]')))

    # Without the token, nothing: not the page, not an API call, not the live updates.
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    token = parts.query.removeprefix("token=")
    assert _status(f"{base}/") == 403
    assert _status(f"{base}/?token=wrong{token}") == 403
    assert _status(f"{base}/api/services") == 403
    assert _status(f"{base}/static/app.js") == 403
    assert _status(f"{base}/api/services", {"X-Busd-Token": token}) == 200
    assert asyncio.run(_websocket_status(f"ws://{parts.netloc}/events")) == 403
    assert asyncio.run(_websocket_status(f"ws://{parts.netloc}/events?token={token}")) == 101


if __name__ == "__main__":
    _chatter(sys.argv[1])
