"""Hostile-peer attacks on match rules and body validation (issue 13: #6, #7, #11), on busd and dbus-daemon.

The harness is test_hostile.py's (system policy, a root bystander that keeps
calling GetId and must be answered within LIVENESS, an attacker forked as uid
nobody). The attack functions below are what the attacker's child runs.

- #7: the attacker's own `arg0='x'` rule and one 30 MiB `ai` signal. argN
  matches only string arguments, so the bus must not decode the array to find
  out that the rule does not match.
- #11: one 30 MiB body of tiny elements (`av` of byte variants, of mixed
  variants, `as` of empty strings, `aay` of empty arrays): validating it must
  not stall the bus past LIVENESS. busd checks runs of one fixed-size variant
  type at regular-expression speed, and checks every body over 1 MiB in a
  thread while only the sender's input waits (the walk of mixed or empty
  elements takes seconds).
- #6: an unprivileged `eavesdrop='true',arg0='y'` rule. dbus-daemon (since
  1.11.16) refuses it with AccessDenied unless the caller is root or the bus's
  own user, as it refuses BecomeMonitor; nothing may reach the attacker, and
  other peers' unicast traffic (large bodies whose first argument is a string)
  keeps flowing. (A privileged peer's eavesdropping rule that its policy never
  lets deliver is passed over before any body is read: tests/unit/test_match.py.)
"""

from __future__ import annotations

import time

import pytest

from busclient import BUS_KINDS, RawClient
from busd.wire.marshal import Variant, marshal_body
from busd.wire.message import METHOD_RETURN, SIGNAL, build_message
from hostile_peer import DEADLINE, Channel
from test_hostile import Bystander, attack, pytestmark, system_bus  # noqa: F401 - pytestmark: needs root


DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
HOSTILE = "org.example.Hostile"
MIB = 1 << 20


# ---------------------------------------------------------------- bodies built as bytes (no 30 MiB lists)


def _with_body(signature: str, empty_body: list, body: bytes, **fields: object) -> bytes:
    """A message whose body is `body`, built from the same message with a 4-byte (empty array) body."""
    small = build_message(SIGNAL, 1, signature=signature, body=empty_body, **fields)  # type: ignore[arg-type]
    assert small[4:8] == (4).to_bytes(4, "little")
    head = bytearray(small[:-4])
    head[4:8] = len(body).to_bytes(4, "little")
    return bytes(head) + body


def empty_elements_signal(signature: str, size: int) -> bytes:
    """A signal whose only argument is an `as` of empty strings or an `aay` of empty arrays, about `size` bytes.

    An empty string is its length and its NUL (8 bytes with the padding before the next one), an
    empty byte array its length alone (4 bytes): all zero bytes either way.
    """
    unit = 8 if signature == "as" else 4
    items = bytes(unit * (size // unit - 1) + (5 if signature == "as" else 4))  # no padding after the last
    return _with_body(signature, [[]], len(items).to_bytes(4, "little") + items,
                      path="/", interface=HOSTILE, member="Big")


def int_array_signal(size: int) -> bytes:
    """A signal whose only argument is an `ai` of `size` bytes."""
    return _with_body("ai", [[]], size.to_bytes(4, "little") + bytes(size),
                      path="/", interface=HOSTILE, member="Big")


def variant_array_signal(size: int, mixed: bool = False) -> bytes:
    """A signal whose only argument is an `av` of about `size` bytes.

    Byte variants, 4 bytes each, are the most elements a size holds; `mixed`
    alternates them with int16 variants (y n y n y: 24 bytes from a position 4
    modulo 8 back to one), so that no two neighbours have the same type.
    """
    unit = marshal_body("av", [[Variant(code, 1) for code in "ynyny"]])[4:] if mixed else b"\x01y\x00\x00"
    items = unit * (size // len(unit))
    return _with_body("av", [[]], len(items).to_bytes(4, "little") + items, path="/", interface=HOSTILE, member="Big")


def string_then_ints(serial: int, destination: str, size: int) -> bytes:
    """A unicast signal `(s, ai)`: a short string first, then `size` bytes of integers."""
    small = build_message(SIGNAL, serial, path="/", interface=HOSTILE, member="Traffic", destination=destination,
                          signature="sai", body=["y", []])
    head = bytearray(small[:-4])  # the body's last 4 bytes are the empty array's length
    head[4:8] = (int.from_bytes(small[4:8], "little") + size).to_bytes(4, "little")
    return bytes(head) + size.to_bytes(4, "little") + bytes(size)


# ---------------------------------------------------------------- attacks (run as nobody)


def _sync(client: RawClient) -> float:
    """GetId with a long deadline: answered once the bus has handled everything sent before. Returns its wait."""
    started = time.monotonic()
    client.call_wait(DBUS, DBUS_PATH, DBUS, "GetId", timeout=DEADLINE).value()
    return time.monotonic() - started


def huge_signal(channel: Channel, address: str, kind: str, size: int, rule: str) -> None:
    """Add `rule` (if any), send one huge signal (`kind` 'ai', 'av', 'av-mixed', 'as' or 'aay'), wait until the
    bus has routed it."""
    if kind == "ai":
        message = int_array_signal(size)
    elif kind in ("as", "aay"):
        message = empty_elements_signal(kind, size)
    else:
        message = variant_array_signal(size, mixed=kind == "av-mixed")
    with RawClient(address) as client:
        if rule:
            client.add_match(rule)
        client.send_bytes(message)
        waited = _sync(client)  # (Peer.Ping, which drain() would send, is a method call nobody may make)
        received = sum(1 for m in client.backlog if m.is_signal("Big"))
    channel.say(f"result received={received} routed_after={waited:.3f}")


def eavesdrop_rule(channel: Channel, address: str, rule: str) -> None:
    """Add an eavesdropping rule, hold it while the test sends traffic, then count what reached us."""
    with RawClient(address) as client:
        reply = client.call_driver("AddMatch", "s", [rule])
        channel.hold(f"addmatch={reply.error_name or 'ok'}")
        _sync(client)
        eavesdropped = [m for m in client.backlog if m.type != METHOD_RETURN and m.interface == HOSTILE]
    channel.say(f"result addmatch={reply.error_name or 'ok'} received={len(eavesdropped)}")


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_arg0_rule_and_a_huge_integer_array(kind: str) -> None:
    """#7: `arg0='x'` and a 30 MiB `ai` signal: an `ai` is no string, so the rule fails without decoding it."""
    with system_bus(kind) as bus:
        bystander = Bystander(bus)
        with attack(bus, huge_signal, "ai", 30 * MIB, f"type='signal',interface='{HOSTILE}',arg0='x'") as attacker:
            result = attacker.result(timeout=2 * DEADLINE)
        summary = bystander.check()
    report = f"{kind}: {summary}; attacker {result}"
    print(report)
    assert result["received"] == "0", report


STALLS = "validating the whole body on the event loop stalls every peer past LIVENESS"


@pytest.mark.parametrize("kind, shape", [
    ("busd", "av"),
    pytest.param("dbus-daemon", "av", marks=pytest.mark.xfail(reason="libdbus: " + STALLS)),
    # The per-element walk of these is ~1 us an element: busd's transport runs it in a thread.
    ("busd", "av-mixed"),
    pytest.param("dbus-daemon", "av-mixed", marks=pytest.mark.xfail(reason="libdbus: " + STALLS)),
    # libdbus walks these in 0.2-0.3 s: dbus-daemon passes.
    ("busd", "as"), ("dbus-daemon", "as"),
    ("busd", "aay"), ("dbus-daemon", "aay"),
])
def test_one_huge_variant_array(kind: str, shape: str) -> None:
    """#11: one 30 MiB body of tiny elements (7.8 million byte variants, 6.5 million bytes and int16s
    mixed, 3.9 million empty strings or 7.8 million empty byte arrays) is validated without stalling the bus."""
    with system_bus(kind) as bus:
        bystander = Bystander(bus)
        with attack(bus, huge_signal, shape, 30 * MIB, "") as attacker:
            result = attacker.result(timeout=2 * DEADLINE)
        summary = bystander.check()
    print(f"{kind} {shape}: {summary}; attacker {result}")


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_unprivileged_eavesdropping_rule(kind: str) -> None:
    """#6: nobody may not eavesdrop: its `eavesdrop='true',arg0='y'` rule is refused, it receives nothing,
    and other peers' unicast traffic (string first, then 8 MiB of integers) keeps flowing."""
    rule = f"eavesdrop='true',interface='{HOSTILE}',arg0='y'"
    with system_bus(kind) as bus, RawClient(bus.address) as sender, RawClient(bus.address) as receiver:
        bystander = Bystander(bus)
        with attack(bus, eavesdrop_rule, rule) as attacker:
            attacker.holding()
            for _ in range(4):
                sender.send_bytes(string_then_ints(sender.next_serial(), receiver.unique_name, 8 * MIB))
                receiver.wait_signal("Traffic", timeout=DEADLINE)
            result = attacker.result()
        summary = bystander.check()
    report = f"{kind}: {summary}; attacker {result}"
    print(report)
    assert result == {"addmatch": "org.freedesktop.DBus.Error.AccessDenied", "received": "0"}, report
