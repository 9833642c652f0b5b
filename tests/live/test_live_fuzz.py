"""Live fuzz (issue 13): a hostile peer sends mutated messages and mutated SASL to a running bus.

While a bystander keeps calling the driver (tests/live/test_hostile.py's
Bystander), a FuzzPeer (tests/fuzz_peer.py) sends one input at a time: the
mutated messages of tests/unit/test_wire_fuzz.py (after Hello, each followed by
a Ping) and mutated SASL conversations (each on a new connection, then EOF).
Only the offending connection may suffer:
- every fuzzed connection is answered (its Ping replied) or dropped, never left hanging;
- every bystander call is answered within LIVENESS;
- the daemon is alive at the end, holds no more sockets than before (every dropped
  connection is closed on its side too), and busd logged no escaped exception.

CI runs a few hundred inputs of each kind; the long run is

    BUSD_LIVE_FUZZ_EXAMPLES=1000000 python3 -m pytest -q -p no:timeout tests/live/test_live_fuzz.py -k busd

Inputs in tests/corpus/ are replayed on every run.
"""

from __future__ import annotations

import os
import re
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from buses import RunningBus, busd_available, start_bus
from busclient import BUS_KINDS, TIMEOUT

pytestmark = pytest.mark.load  # .ci/run runs it once, in its first pass (pyproject: markers)
from fuzz_peer import ANSWERED, DROPPED, DROPPED_AT_EOF, FuzzPeer, corpus_message, sasl_inputs
from test_hostile import Bystander
from test_wire_fuzz import CORPUS_FILES, load_corpus_entry, mutated_messages

EXAMPLES = int(os.environ.get("BUSD_LIVE_FUZZ_EXAMPLES", "200"))
LIVE_FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.filter_too_much])
# What busd logs when an exception escapes a callback or the loop (busd/daemon/assembly.py), and Python's own.
ESCAPED = re.compile(r"Traceback|Exception in callback|unexpected error|Task exception|error in the event loop")


# A message that claims fds it did not bring waits for them (dbus-daemon) for pending_fd_timeout,
# then its sender is dropped: 200 ms, not the default 150 s, so that one input costs a fraction of a second.
BUS_CONFIG = '<limit name="pending_fd_timeout">200</limit>'


@contextmanager
def logged_bus(kind: str, log_path: Path) -> Iterator[RunningBus]:
    """A bus of `kind` on the session config whose stderr (its log) goes to `log_path`."""
    if kind == "busd" and not busd_available():
        pytest.skip("the busd daemon is not built yet")
    saved = os.dup(2)
    try:
        with open(log_path, "w") as log:
            os.dup2(log.fileno(), 2)
        bus = start_bus(kind, BUS_CONFIG)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    try:
        yield bus
    finally:
        bus.stop()


def socket_count(pid: int) -> int:
    """How many sockets process `pid` holds (its listeners and connections; other fds, such as
    dbus-daemon's inotify watch of the service directories opened at the first activation, are not peers')."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return count


def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Poll `condition` (a count read from /proc, a counter of another thread) until it holds or time is up."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_sockets_at_most(pid: int, bound: int) -> int:
    """The daemon's socket count once it is at most `bound` (it closes dropped connections as it sees them go)."""
    wait_until(lambda: socket_count(pid) <= bound)
    return socket_count(pid)


def escaped_exceptions(log_path: Path) -> list[str]:
    with open(log_path, errors="replace") as log:
        return [line.rstrip() for line in log if ESCAPED.search(line)][:10]


def fuzz_live(kind: str, tmp_path: Path, feed: Callable[[FuzzPeer], None]) -> str:
    """Run `feed` (which sends the inputs through a FuzzPeer) against a bus of `kind`, and check the bus."""
    log_path = tmp_path / f"{kind}.log"
    with logged_bus(kind, log_path) as bus:
        bystander = Bystander(bus)
        # Counted once the bystander has been answered: by then the daemon has made the sockets it makes
        # for itself after printing its address (dbus-daemon), and holds one for the bystander.
        wait_until(lambda: bystander.calls > 0 or bystander.failure is not None)
        before = socket_count(bus.process.pid)
        peer = FuzzPeer(bus.address)
        try:
            feed(peer)
        finally:
            peer.close()
        summary = f"{kind}: {dict(peer.outcomes)}; " + bystander.check()
        assert bus.process.poll() is None, f"the daemon died: {summary}"
        sockets = wait_sockets_at_most(bus.process.pid, before - 1)  # the bystander has gone too
        assert sockets <= before - 1, f"{sockets} sockets left, {before} before (with the bystander): {summary}"
        bus.process.send_signal(signal.SIGTERM)
        bus.process.wait(TIMEOUT * 2)
    if kind == "busd":
        escaped = escaped_exceptions(log_path)
        assert not escaped, f"{summary}; the daemon logged: {escaped}"
    assert sum(peer.outcomes.values()) > 0, summary
    return summary


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_mutated_messages_hurt_only_their_sender(kind: str, tmp_path: Path) -> None:
    def feed(peer: FuzzPeer) -> None:
        @given(buf=mutated_messages())
        @LIVE_FUZZ
        def one(buf: bytes) -> None:
            peer.message(buf)
        one()

    summary = fuzz_live(kind, tmp_path, feed)
    print(summary)


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_mutated_sasl_hurts_only_its_sender(kind: str, tmp_path: Path) -> None:
    def feed(peer: FuzzPeer) -> None:
        @given(buf=sasl_inputs())
        @LIVE_FUZZ
        def one(buf: bytes) -> None:
            peer.sasl(buf)
        one()

    summary = fuzz_live(kind, tmp_path, feed)
    print(summary)


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_corpus_inputs_hurt_only_their_sender(kind: str, tmp_path: Path) -> None:
    """Every saved input of tests/corpus/, as a message from a peer that said Hello."""
    def feed(peer: FuzzPeer) -> None:
        for path in CORPUS_FILES:
            outcome = peer.message(corpus_message(load_corpus_entry(path)))
            assert outcome in (ANSWERED, DROPPED, DROPPED_AT_EOF), path.name

    fuzz_live(kind, tmp_path, feed)
