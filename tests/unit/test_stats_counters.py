"""The counters Debug.Stats and the metrics read from a stream, and busdctl top's rendering, without a bus."""

from __future__ import annotations

import asyncio
import socket

from busd.transport.stream import Stream
from busd.wire.message import METHOD_CALL, SIGNAL, build_message
from busdctl.top import COLUMNS, render_lines, rows_with_rates, sort_rows
from busdctl.top_data import TopSnapshot


def _split(message: bytes) -> tuple[bytes, bytes]:
    """Header (padded) and body, as the bus queues them."""
    fields = int.from_bytes(message[12:16], "little")
    end = 16 + fields + (-fields % 8)
    return message[:end], message[end:]


def test_queued_messages_counts_each_message_once_a_partly_written_one_included() -> None:
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        stream = Stream(loop, lambda link: None)
        stream.attach(ours)
        big = build_message(METHOD_CALL, 1, path="/", member="Big", signature="ay", body=[b"x" * 300_000])
        small = build_message(SIGNAL, 2, path="/", interface="org.example.I", member="Tick")
        stream.queue(*_split(big))
        stream.queue(small, b"")  # a whole message as one buffer
        stream.queue(*_split(big))
        assert stream.queued_messages() == 3
        assert stream.sent[METHOD_CALL] == 2 and stream.sent[SIGNAL] == 1
        stream.flush()  # the socket takes part of the first message only
        assert 0 < stream.bytes_written < len(big)
        assert stream.queued_messages() == 3
        stream.shut()
    finally:
        theirs.close()
        loop.close()


def _row(name: str, messages: int, names: list[str]) -> dict:
    return {"connection": name, "names": names, "pid": 10, "process": "svc", "uid": 0, "messages_in": messages,
            "messages_out": messages, "bytes_in": 0, "bytes_out": 0, "queued_in_bytes": 0, "queued_out_bytes": 0,
            "queued_fds": 0, "match_rules": 1, "quota_line": "Names", "quota_used": 0.5, "ledger": None}


def test_top_rates_sorting_and_screen() -> None:
    before = TopSnapshot(taken_at=100.0, connections=[_row(":1.1", 10, []), _row(":1.2", 10, ["org.example.B"])])
    after = TopSnapshot(taken_at=102.0, bus={"MatchRules": 2, "BusNames": 3},
                        connections=[_row(":1.1", 30, []), _row(":1.2", 14, ["org.example.B"]),
                                     _row(":1.3", 5, [])],
                        users={0: {"Names": [1, 1, 100], "OutgoingBytes": [2048, 4096, 1 << 20]}})
    rows = rows_with_rates(before, after)
    assert [(r["connection"], r["messages_in_per_s"]) for r in rows] == [(":1.1", 10.0), (":1.2", 2.0), (":1.3", None)]
    by_rate = [c.title for c in COLUMNS].index("MSG/S IN")
    ordered = sort_rows(rows, by_rate, descending=True)
    assert [r["connection"] for r in ordered] == [":1.1", ":1.2", ":1.3"]
    lines = render_lines(after, ordered, by_rate, True, "the bus")
    assert lines[0].startswith("the bus") and "2 match rules" in lines[0] and "3 names" in lines[0]
    header = next(line for line in lines if line.startswith("CONNECTION"))
    assert "MSG/S IN▼" in header
    assert any("org.example.B" in line and "50.0% Names" in line for line in lines)
    assert any(line.startswith("root") and "1/100 1%" in line and "2.0K/1.0M 0%" in line for line in lines)
