"""The daemon's logging set-up: its handlers and formats (run in this process, restored after)."""

from __future__ import annotations

import json
import logging

import pytest

from busd.daemon import logs


class Stderr:
    """What the daemon wrote to stderr (pytest's capture is where sys.stderr points during the test)."""

    def __init__(self, capsys: pytest.CaptureFixture) -> None:
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().err


@pytest.fixture
def busd_logger(capsys: pytest.CaptureFixture):
    logger = logging.getLogger("busd")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    yield logger, Stderr(capsys)
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]


@pytest.mark.parametrize("syslog", [None, "both"])
def test_text_lines_go_to_stderr_at_the_chosen_level(busd_logger, syslog: str | None) -> None:
    logger, stderr = busd_logger
    logs.setup_logging("info", "text", syslog)
    logging.getLogger("busd.test").debug("not shown")
    logging.getLogger("busd.test").info("shown")
    assert stderr.getvalue().splitlines() == [f"busd[{logs.os.getpid()}]: INFO busd.test: shown"]


def test_json_lines_carry_the_level_logger_and_message(busd_logger) -> None:
    logger, stderr = busd_logger
    logs.setup_logging("warning", "json")
    logging.getLogger("busd.test").warning("careful %s", "now")
    record = json.loads(stderr.getvalue())
    assert (record["level"], record["logger"], record["message"]) == ("warning", "busd.test", "careful now")


def test_syslog_only_writes_nothing_to_stderr(busd_logger) -> None:
    logger, stderr = busd_logger
    logs.setup_logging("info", "text", "only")
    logging.getLogger("busd.test").info("to syslog, if this machine has /dev/log")
    assert stderr.getvalue() == ""
    assert all(type(handler).__name__ == "SysLogHandler" for handler in logger.handlers)
