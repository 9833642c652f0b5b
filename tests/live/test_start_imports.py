"""busd starts on what its configuration needs: the modules a real start imports before it prints its address.

Start time is mostly imports (benchmarks/bench_bus.py's start workload times it), so
this guards it without timing anything: `python -X importtime` names every module as
it is imported, on stderr, before busd writes its address to its pipe; what stderr
holds when the address arrives is what the start imported. The built-in
configuration asks for no bridge, no federation, no metrics and no cookie
authentication, so none of their modules, nor the libraries behind them, may be there.

The interpreter runs with -S (site-packages put on sys.path by hand), so that what
site's .pth files import here (an editable install's finder imports pathlib, this
sandbox's certificate hook tempfile and zipfile) does not hide what busd imports.
"""

from __future__ import annotations

import fcntl
import os
import select
import site
import subprocess
import sys
import time

import pytest

from buses import START_TIMEOUT, helper_env

pytestmark = pytest.mark.live

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Not for the built-in configuration: what each is for, and who imports it when it is asked for.
NOT_NEEDED = {
    "busd.bridge.settings": "a bridge or federation (--upstream, <busd:bridge>)",
    "busd.bridge.bridge": "a bridge",
    "busd.bridge.nats_federation": "a federation",
    "nats": "a federation (the NATS client)",
    "busd.daemon.metrics": "--metrics, <busd:metrics>",
    "busd.daemon.metrics_setup": "--metrics, <busd:metrics>",
    "prometheus_client": "--metrics",
    "hashlib": "a DBUS_COOKIE_SHA1 exchange (libcrypto's digests)",
    "hmac": "a DBUS_COOKIE_SHA1 exchange",
    "secrets": "a DBUS_COOKIE_SHA1 exchange (it imports hashlib)",
    "json": "--log-format=json",
    "xml.etree": "nothing: the configuration is parsed with expat",
    "xml.dom": "nothing: the configuration is parsed with expat",
    "logging.handlers": "--syslog",
    "aiohttp": "busdctl web",
    "pydantic": "nothing any more (the configuration model was pydantic: 11 MiB and half the start)",
    "dbus_next": "clients and tests, never the daemon",
    "busd_client": "clients, never the daemon",
    "pathlib": "nothing: os.path (pathlib imports urllib.parse and ipaddress)",
    "urllib.parse": "nothing",
    "tempfile": "a unix: address that names no directory",
    "shutil": "nothing (argparse's formatter imports it; busd's finds the width without it)",
    "zipfile": "nothing",
}

# busd's command line, run as `python -S -c RUN ARGS...`: site-packages on sys.path without site's .pth files.
RUN = ("import sys; sys.path[:0] = [sys.argv[1]]; sys.path.extend(sys.argv[2].split(':')); "
       "sys.argv = ['busd', *sys.argv[3:]]; from busd.daemon.cli import main; sys.exit(main())")


def imported_before_address(*args: str) -> set[str]:
    """The modules `python -X importtime -m busd ARGS` imported before it printed its address."""
    read_fd, write_fd = os.pipe()
    packages = ":".join([*site.getsitepackages(), site.getusersitepackages()])
    process = subprocess.Popen([sys.executable, "-S", "-X", "importtime", "-c", RUN, REPO, packages, "--nofork",
                                f"--print-address={write_fd}", *args],
                               pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=helper_env(), cwd=REPO)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as reader:
            printed = select.select([reader], [], [], START_TIMEOUT)[0]
            address = reader.readline().strip() if printed else ""
        # Written before the address, so already in the pipe; read it without waiting for more.
        assert process.stderr is not None
        fcntl.fcntl(process.stderr, fcntl.F_SETFL, os.O_NONBLOCK)
        chunks = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = os.read(process.stderr.fileno(), 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        text = b"".join(chunks).decode(errors="replace")
        assert address, f"busd printed no address (status {process.poll()}): {text[-2000:]}"
    finally:
        process.terminate()
        process.communicate(timeout=10)
    return {line.rpartition("|")[2].strip() for line in text.splitlines() if line.startswith("import time:")}


def unneeded(modules: set[str], allowed: set[str] = frozenset()) -> dict[str, str]:
    return {name: why for name, why in NOT_NEEDED.items() if name in modules and name not in allowed}


def test_the_built_in_configuration_imports_nothing_it_does_not_need(tmp_path) -> None:  # noqa: ANN001
    modules = imported_before_address(f"--address=unix:path={tmp_path}/bus")
    assert {"busd.daemon.assembly", "busd.config.parser", "asyncio", "ssl"} <= modules  # it did start
    assert unneeded(modules) == {}


def test_a_bridge_asked_for_is_imported_and_nothing_else(tmp_path) -> None:  # noqa: ANN001
    # The upstream bus is not there: busd serves on and the bridge keeps trying to connect.
    modules = imported_before_address(f"--address=unix:path={tmp_path}/bus",
                                      f"--upstream=unix:path={tmp_path}/no-upstream", "--import=org.example.Foo")
    bridge = {"busd.bridge.settings", "busd.bridge.bridge"}
    assert bridge <= modules
    assert unneeded(modules, allowed=bridge) == {}
