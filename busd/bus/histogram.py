"""Histograms of durations the bus measures (call to reply, service starts), read by the metrics.

Plain counts per bucket, nothing else: observing is a bisect and two adds, and
the metrics exporter turns them into Prometheus buckets at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left

# Seconds: 100 us to 25 s (the default reply timeout), as a bus sees calls answered in-process to stuck.
REPLY_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0, 25.0)
START_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0)


class Histogram:
    """Observations of one duration: a count per bucket (the last one is +Inf), their sum and count."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), +Inf last: Prometheus's buckets."""
        found, total = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts):
            total += count
            found.append((bound, total))
        return found


__all__ = ["Histogram", "REPLY_BOUNDS", "START_BOUNDS"]
