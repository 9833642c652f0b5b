"""The soak's verdict statistic (benchmarks/soak.py high_water_growth) on made-up series: a leak fails, swings pass."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))

from soak import Sample, high_water_growth, slope  # noqa: E402


def series(values_mib: list[float], interval: float = 2.0) -> list[Sample]:
    return [Sample(t=i * interval, rss_kib=int(v * 1024), fds=24, zombies=0) for i, v in enumerate(values_mib)]


def test_a_steady_leak_reads_as_its_rate() -> None:
    # 1 MiB per minute = 1/30 MiB per 2-second sample
    samples = series([30 + i / 30 for i in range(40)])
    assert high_water_growth(samples, 0) == pytest.approx(1.0, abs=0.05)
    assert slope(samples, 0) == pytest.approx(1.0, abs=0.01)


def test_a_swing_within_the_window_is_not_growth() -> None:
    # CI's failing run (issue 13's soak, busd): 20..50 s after a warm-up, a queue filled and was dropped
    values = [34.5, 34.0, 34.0, 33.4, 33.4, 33.4, 33.4, 33.4, 33.6, 34.1, 34.6, 34.7, 34.7, 34.7, 34.7, 34.7]
    samples = series(values)
    assert slope(samples, 0) > 1.0  # what the old verdict read
    assert high_water_growth(samples, 0) < 1.0


def test_too_few_samples_give_no_verdict() -> None:
    assert high_water_growth(series([30, 31, 32]), 0) is None
    assert high_water_growth(series([30] * 10), 100) is None
