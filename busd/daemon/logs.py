"""Logging set-up: one line per event, as text or JSON, to stderr and/or syslog."""

from __future__ import annotations

import logging
import os
import sys
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        import json  # here: a daemon logging text never loads it

        return json.dumps(entry)


def setup_logging(level: str = "warning", fmt: str = "text", syslog: str | None = None) -> None:
    root = logging.getLogger("busd")
    root.setLevel(getattr(logging, level.upper()))
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if syslog != "only":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if fmt == "json" else
                             logging.Formatter("busd[%(process)d]: %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    if syslog in ("both", "only") and os.path.exists("/dev/log"):
        from logging.handlers import SysLogHandler  # only with syslog: a tenth of the import time of a start

        handler = SysLogHandler(address="/dev/log", facility=SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter("busd[%(process)d]: %(name)s: %(message)s"))
        root.addHandler(handler)
