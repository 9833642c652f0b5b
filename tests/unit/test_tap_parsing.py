"""Reading another project's TAP output, where the daemons it starts write to the same file."""

from __future__ import annotations

from installed_tests import parse_tap


def test_a_plan_after_a_daemon_s_log_prefix_counts() -> None:
    # Seen in CI: dbus-daemon wrote "dbus-daemon[4008]: ", then the program its plan, then the daemon the rest.
    output = ("dbus-daemon[4008]: 1..2\n# Start of gdbus tests\nok 1 /gdbus/a\n"
              "[session uid=0 pid=4008] org.freedesktop.DBus.Error.AccessDenied: Failed to set fd limit\n"
              "ok 2 /gdbus/b\n")
    result = parse_tap(0, output)
    assert (result.planned, result.passed, result.problems()) == (2, ["/gdbus/a", "/gdbus/b"], None)


def test_a_failure_or_a_missing_subtest_is_a_problem() -> None:
    assert parse_tap(0, "1..2\nok 1 /a\nnot ok 2 /b\n").problems() == "failed: ['/b']"
    assert parse_tap(0, "1..3\nok 1 /a\nok 2 /b\n").problems() == "2 of 3 subtests passed"
    assert parse_tap(0, "ok 1 /a\n").problems() == "1 of -1 subtests passed"
    assert parse_tap(1, "1..1\nok 1 /a\n").problems() == "exit status 1"


def test_a_plan_inside_other_text_is_not_a_plan() -> None:
    assert parse_tap(0, "# covers 1..5 of the spec\nok 1 /a\n").planned == -1
