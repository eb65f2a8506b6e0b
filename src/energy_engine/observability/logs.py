"""Log lines on stderr, JSON (one object a line) or plain, each carrying the id of the request
it was written in.

The formatters are a few lines over the standard `logging` module with orjson rather than a
library (python-json-logger, structlog): the engine needs one flat object a line with a fixed
set of keys plus the request's fields, and orjson is already a dependency.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from energy_engine.settings import LogFormat, Settings

# The id of the request being answered; set by `requests.RequestLog` for the request's task.
REQUEST_ID: ContextVar[str | None] = ContextVar("energy_request_id", default=None)

# A record's fields beyond the standard ones, as `log.info("…", extra={"fields": {...}})`.
FIELDS = "fields"


_second: tuple[int, str] = (-1, "")


def _time(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds; the text up to the second is made once a second
    (a third of the formatting time otherwise)."""
    global _second
    whole = int(record.created)
    if whole != _second[0]:
        at = datetime.fromtimestamp(whole, UTC)
        _second = (whole, at.strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, process id, message, the request id when
    the line was written during a request, the record's fields, and a traceback if there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        line: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = request_id
        fields = getattr(record, FIELDS, None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class PlainFormatter(logging.Formatter):
    """One readable line for a terminal: time, level, logger, [request id], message, fields
    as key=value, then the traceback if there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line (more for a traceback)."""
        parts = [_time(record), record.levelname, record.name]
        request_id = REQUEST_ID.get()
        if request_id is not None:
            parts.append(f"[{request_id}]")
        parts.append(record.getMessage())
        fields = getattr(record, FIELDS, None)
        if fields:
            parts.extend(f"{key}={value}" for key, value in fields.items() if value is not None)
        text = " ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _EngineHandler(logging.StreamHandler[TextIO]):
    """The handler `configure` installs (told apart so that configuring again replaces it)."""


def configure(settings: Settings, stream: TextIO | None = None) -> None:
    """Send every log line (the engine's, uvicorn's, asyncpg's) to `stream` (stderr) in the
    format and from the level of `settings`; replaces what an earlier call installed."""
    handler = _EngineHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        JsonFormatter() if settings.log_format is LogFormat.JSON else PlainFormatter()
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _EngineHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # What no line shows is not gathered (logging's documented optimisations): the caller's
    # file and line (a stack walk per record), the thread and the multiprocessing name.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    # uvicorn's loggers write through the root handler (serve passes log_config=None); its
    # access log stays off: RequestLog writes the engine's line instead.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
