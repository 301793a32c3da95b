"""JSON log lines: every record one JSON object, with the fields of the text lines.

``runflow-callbacks serve --log-format json`` uses it for its own lines and uvicorn's. A library
user installs it on a handler::

    import logging
    from runflow_callbacks.logs import JsonFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.getLogger("runflow_callbacks").addHandler(handler)

Each object has ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and
``message``; a per-callback line adds its fields without their ``runflow_`` prefix
(``event``, ``id``, ``outcome``, ``secret``, ``request_id``, ``key``, ``attempt``, ``source``,
``latency_ms``), and a record with an exception adds ``error`` (its type) and ``traceback``.
Values are JSON-escaped, so nothing a request carried can break a line.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any, Final

__all__ = ["JsonFormatter", "json_log_config"]

_PREFIX: Final = "runflow_"


class JsonFormatter(logging.Formatter):
    """Formats each record as one line of JSON (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name.startswith(_PREFIX):
                line[name[len(_PREFIX) :]] = value
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=True)


def json_log_config(level: str) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` (and uvicorn ``log_config``) sending every record,
    ours and uvicorn's, to stderr as JSON at ``level``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "level": level.upper(), "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
