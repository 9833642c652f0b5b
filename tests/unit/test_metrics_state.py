"""The metrics' bookkeeping without a process: the log lines they count, addresses from the config, histograms."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from busd.bus.histogram import Histogram
from busd.config.model import ExtensionElement
from busd.daemon.metrics_setup import MetricsSetupError, metrics_addresses
from busd.daemon.metrics_state import (CONNECTION_DROPPED, POLICY_DENIED, QUEUE_FULL, TEMPLATE_SOURCES, LogCounts,
                                       rule_label)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("template", sorted(TEMPLATE_SOURCES))
def test_each_counted_log_line_is_still_logged_there(template: str) -> None:
    """A reworded log line would silently stop a counter: the format string must be in its file verbatim."""
    source = (ROOT / TEMPLATE_SOURCES[template]).read_text(encoding="utf-8")
    joined = source.replace('"\n', "").replace("\n", " ")  # format strings split over lines
    flattened = " ".join(joined.split()).replace('" "', "")
    assert template in source or template in flattened, f"{template!r} is no longer in {TEMPLATE_SOURCES[template]}"


def _record(template: str, args: tuple, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("busd.bus", level, __file__, 1, template, args, None)


def test_log_counts_by_rule_limit_and_level() -> None:
    counts = LogCounts()
    counts.emit(_record(POLICY_DENIED, ("call", "receive", None, ":1.1", 0, ":1.2", 0)))
    counts.emit(_record(POLICY_DENIED, ("call", "send", "/etc/x.conf:3", ":1.1", 0, ":1.2", 0)))
    counts.emit(_record(QUEUE_FULL, ("method_call", ":1.1", ":1.2", 0, "max_outgoing_bytes", 10)))
    counts.emit(_record(CONNECTION_DROPPED, ("#1", 0, 1, "peer closed the connection"), logging.DEBUG))
    counts.emit(_record(CONNECTION_DROPPED, ("#2", 0, 1, "authentication failed"), logging.WARNING))
    counts.emit(_record("something else %s", ("x",)))
    assert counts.denials == {("receive", "default"): 1, ("send", "/etc/x.conf:3"): 1}
    assert counts.refusals == {"max_outgoing_bytes": 1}
    assert counts.dropped_connections == 1
    assert rule_label("(default deny)") == "default"


def test_metrics_addresses_from_the_command_line_then_the_config() -> None:
    element = ExtensionElement(name="metrics", attributes={"address": "unix:path=/run/busd-metrics"},
                               file="bus.conf", line=7)
    other = ExtensionElement(name="bridge", attributes={}, file="bus.conf", line=9)
    assert metrics_addresses(["tcp:host=127.0.0.1,port=9"], [element, other]) == [
        "tcp:host=127.0.0.1,port=9", "unix:path=/run/busd-metrics"]
    with pytest.raises(MetricsSetupError, match="bus.conf:7: <busd:metrics> needs address"):
        metrics_addresses([], [ExtensionElement(name="metrics", file="bus.conf", line=7)])


def test_histogram_buckets_are_cumulative_with_inf_last() -> None:
    histogram = Histogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(seconds)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.count == 4 and histogram.sum == pytest.approx(3.65)
