"""Smoke tests for the benchmark harness and its raw client, run briefly against dbus-daemon so they do not rot."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from buses import RunningBus

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARKS = os.path.join(REPO, "benchmarks")
sys.path.insert(0, BENCHMARKS)

import bench_bus  # noqa: E402
import rawclient as rc  # noqa: E402

# The workloads the project issue asks for; the harness must cover every one of them.
ISSUE_WORKLOADS = {"seq", "inflight", "signal-1", "signal-10", "signal-100",
                   "payload-1MiB", "payload-16MiB", "churn", "idle", "start"}
# The figure each workload exists to produce.
HEADLINES = {"seq": "calls/s", "inflight": "calls/s", "signal-1": "deliveries/s",
             "signal-10": "deliveries/s", "signal-100": "deliveries/s", "payload-1MiB": "MiB/s",
             "payload-16MiB": "MiB/s", "churn": "connections/s", "idle": "RSS/connection (kB)",
             "start": "start to address, median (ms)"}
# Workloads that measure memory or start time: no CPU split.
NO_CPU_SPLIT = {"idle", "start"}


def run_harness(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(BENCHMARKS, "bench_bus.py"), *args],
                          capture_output=True, text=True, timeout=180)


@pytest.mark.live
def test_harness_produces_every_figure_on_dbus_daemon() -> None:
    run = run_harness("--buses", "dbus-daemon", "--quick", "--seconds", "0.1",
                      "--idle-connections", "100", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert set(bench_bus.WORKLOADS) == ISSUE_WORKLOADS
    assert set(report["results"]) == ISSUE_WORKLOADS, report["failures"]
    for name, by_bus in report["results"].items():
        figures = by_bus["dbus-daemon"]
        assert figures[HEADLINES[name]] > 0, (name, figures)
        assert all(math.isfinite(value) and value >= 0 for value in figures.values()), (name, figures)
        if name not in NO_CPU_SPLIT:
            assert any(f.startswith("daemon CPU/") for f in figures), (name, figures)
            assert any(f.startswith("client CPU/") for f in figures), (name, figures)
            assert "dbus-daemon" in report["cpu_split"][name], name
    assert report["machine"]["cpu split"]
    start = report["results"]["start"]["dbus-daemon"]
    assert 0 < start["RssAnon after start (MiB)"] < start["RSS after start (MiB)"], start
    assert not any(figure.startswith("interpreter") for figure in start)  # only beside the Python buses


@pytest.mark.live
def test_start_workload_puts_the_interpreter_beside_busd_and_skips_dbus_broker() -> None:
    run = run_harness("--buses", "busd,dbus-broker", "--only", "start", "--quick", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    if "dbus-broker" not in report["skipped"]:
        assert "no --print-address" in report["not_applicable"]["start"]["dbus-broker"]
    figures = report["results"]["start"]["busd"]
    assert figures["start to address, median (ms)"] > figures["interpreter alone: exec to a line (ms)"] > 0
    assert figures["RSS after start (MiB)"] > figures["RssAnon after start (MiB)"] > 0
    # busd imports its runtime and then itself: its memory is above the runtime's, which is above the bare
    # interpreter's (the runtime row is the floor busd's own share is measured from)
    assert figures["RSS after start (MiB)"] > figures["interpreter + its runtime: RSS (MiB)"] \
        > figures["interpreter alone: RSS (MiB)"] > 0
    # busd's modules are started from bytecode, as installed, not compiled at every start
    assert report["machine"]["bytecode"] == "busd's .pyc files written, as pip writes them on install"


@pytest.mark.live
def test_the_null_bus_runs_churn_beside_dbus_daemon_and_nothing_else() -> None:
    run = run_harness("--buses", "dbus-daemon,null-bus", "--only", "churn", "seq", "start", "--quick",
                      "--seconds", "0.2", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert not report["failures"] and not report["skipped"], run.stderr
    churn = report["results"]["churn"]["null-bus"]
    assert churn["connections/s"] > 0 and churn["daemon CPU/connection (µs)"] > 0, churn
    assert "null-bus" not in report["results"]["seq"]
    for name in ("seq", "start"):
        assert "churn only" in report["not_applicable"][name]["null-bus"], report["not_applicable"]


@pytest.mark.live
def test_harness_skips_a_bus_that_cannot_start() -> None:
    run = run_harness("--buses", "no-such-bus,dbus-daemon", "--only", "churn", "--quick", "--seconds", "0.1")
    assert run.returncode == 0, run.stderr
    assert "skipping no-such-bus:" in run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split()[:3] == ["workload", "figure", "dbus-daemon"]
    assert any(line.startswith("churn") and "connections/s" in line for line in lines)
    assert "no-such-bus skipped:" in run.stdout


@pytest.mark.live
def test_raw_client_round_trip_frames_big_and_small_messages(reference_bus: RunningBus) -> None:
    service = rc.Connection.open(reference_bus.address, timeout=10)
    caller = rc.Connection.open(reference_bus.address, timeout=10)
    assert service.unique_name.startswith(":") and service.unique_name != caller.unique_name
    payload = bytes(range(256)) * 4096  # 1 MiB: far bigger than one recv, so the body is skipped
    call = rc.method_call(service.unique_name, "/org/busd/Bench", "org.busd.Bench", "Take", "ay", (payload,))
    serial = caller.next_serial()
    rc.set_serial(call, serial)
    caller.send(call)

    (header,) = service.reader.read()
    fields = rc.header_fields(header)
    assert rc.message_type(header) == rc.METHOD_CALL
    assert (fields[rc.MEMBER], fields[rc.SIGNATURE], fields[rc.SENDER]) == ("Take", "ay", caller.unique_name)
    assert rc.message_serial(header) == serial

    reply = bytearray()
    rc.ReplyTemplate(fields[rc.SENDER]).render(reply, service.next_serial(), rc.message_serial(header))
    service.send(reply)
    answer = caller.wait_reply(serial)
    assert rc.message_type(answer) == rc.METHOD_RETURN
    assert rc.header_fields(answer)[rc.SENDER] == service.unique_name
    service.close()
    caller.close()


def test_parse_address_takes_the_first_unix_entry() -> None:
    assert rc.parse_address("tcp:host=x,port=1;unix:path=/tmp/a%20b,guid=00") == ("path", "/tmp/a b")
    assert rc.parse_address("unix:abstract=/tmp/dbus-x") == ("abstract", "/tmp/dbus-x")
    with pytest.raises(ValueError, match="only speaks unix"):
        rc.parse_address("tcp:host=localhost,port=1")


@pytest.mark.live
def test_raw_client_counts_error_replies_once(reference_bus: RunningBus) -> None:
    caller = rc.Connection.open(reference_bus.address, timeout=10)
    nowhere = rc.method_call(":1.9999", "/org/busd/Bench", "org.busd.Bench", "Ping")
    caller.send(caller.batch(nowhere, 3))
    replies = 0
    while replies < 3:
        replies += caller.reader.count()
    assert caller.reader.errors == 3
    with pytest.raises(rc.BusError, match="ServiceUnknown"):
        caller.call(nowhere)
    caller.close()


@pytest.mark.live
def test_harness_measures_dbus_broker_beside_dbus_daemon() -> None:
    from broker import unavailable_reason
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    # 0.5 s, not 0.1: /proc counts CPU time in 10 ms ticks, and dbus-broker once spent less than one in 0.1 s
    run = run_harness("--buses", "dbus-daemon,dbus-broker", "--only", "seq", "signal-10", "idle", "--quick",
                      "--seconds", "0.5", "--idle-connections", "50", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["skipped"] == {} and report["failures"] == {}, report
    for name in ("seq", "signal-10"):
        figures = report["results"][name]["dbus-broker"]
        assert figures[HEADLINES[name]] > 0 and figures[next(f for f in figures if f.startswith("daemon CPU/"))] > 0
    # The bus process itself is measured, not the Python wrapper around its launcher (about 10 MiB):
    # dbus-broker starts under 3 MiB.
    assert 0 < report["results"]["idle"]["dbus-broker"]["RSS at start (MiB)"] < 6
    table = run_harness("--buses", "dbus-daemon,dbus-broker", "--only", "churn", "--quick", "--seconds", "0.1")
    assert table.stdout.splitlines()[0].split()[:5] == ["workload", "figure", "dbus-daemon", "dbus-broker",
                                                        "dbus-daemon/dbus-broker"]


def test_path_bench_times_every_workload_in_both_modes() -> None:
    """bench_path.py (in one process, no daemon) gives a positive CPU time for each workload, connect included,
    compiled and pure, in its JSON."""
    result = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "bench_path.py"), "--json", "--rounds", "20"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    import bench_path
    for mode in ("compiled", "pure"):
        assert set(figures[mode]["figures"]) == set(bench_path.FIGURES)
        assert all(value > 0 and math.isfinite(value) for value in figures[mode]["figures"].values()), figures[mode]
    assert "connect" in bench_path.WORKLOADS and set(bench_path.CONNECT_PARTS) < set(bench_path.FIGURES)
    assert figures["pure"]["mode"].startswith("pure Python")
