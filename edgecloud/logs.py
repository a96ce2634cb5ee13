"""Structured logs: one JSON object per line, one shape in every part of edgecloud.

    {"ts": 1764480000.123, "level": "info", "logger": "edgecloud.node", "event": "...", ...}

Two ways in, the same shape out:

- `log_event(logger, "event_name", **fields)` for events (start, stop, failures, limits), through
  the standard `logging` module; `configure_logging` sends them to stderr as JSON lines.
- `AccessLog` for the per-request line on a hot path (the gateway): records are serialised at
  once but written in one syscall per flush, which the server loop does every 0.2 s.

Never pass a prompt or a secret. As a second line of defence, fields whose names say they hold a
credential (key, token, password, secret, authorization) are written as "[redacted]".
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson

_SECRET_WORDS = ("key", "token", "password", "secret", "authorization")
_REDACTED = "[redacted]"
_SAFE_NAMES = frozenset({"key_name", "tokens"})  # names, counts: not credentials


def _is_secret(name: str) -> bool:
    lower = name.lower()
    return lower not in _SAFE_NAMES and not lower.endswith("_tokens") and any(
        w in lower for w in _SECRET_WORDS
    )


def event_record(logger: str, level: str, event: str, fields: dict[str, Any],
                 ts: float | None = None) -> dict[str, Any]:
    """The one log shape: ts, level, logger, event, then the event's own fields."""
    record: dict[str, Any] = {
        "ts": round(time.time() if ts is None else ts, 3),
        "level": level,
        "logger": logger,
        "event": event,
    }
    for name, value in fields.items():
        if name not in record:
            record[name] = _REDACTED if _is_secret(name) else value
    return record


class JsonFormatter(logging.Formatter):
    """Formats a log record as one JSON object in the shared shape."""

    def format(self, record: logging.LogRecord) -> str:
        event = event_record(record.name, record.levelname.lower(), record.getMessage(),
                             getattr(record, "fields", None) or {}, record.created)
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(event, default=str).decode()


def configure_logging(level: str | int = "info", stream: IO[str] | None = None) -> None:
    """Send every edgecloud (and uvicorn) log record to stderr as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    lvl = level.upper() if isinstance(level, str) else level
    for name in ("edgecloud", "uvicorn"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("edgecloud").setLevel(lvl)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event with its fields."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})


class AccessLog:
    """Per-request records in the shared shape on a byte stream (stdout by default), buffered.

    The caller fills a dict per request (never the prompt) and calls `write`; `flush` writes
    what is buffered. Records carry `event` themselves (e.g. "request")."""

    def __init__(self, logger: str, stream: IO[bytes] | None = None) -> None:
        if stream is None:
            # Our own large buffer over stdout: one write syscall per flush, not one per few
            # dozen records as with sys.stdout's 8 KiB.
            sys.stdout.flush()
            stream = open(sys.stdout.fileno(), "wb", buffering=1 << 20, closefd=False)  # noqa: SIM115
        self.stream = stream
        self.logger = logger
        self._fixed = b'"level":"info","logger":' + orjson.dumps(logger) + b","

    def write(self, record: dict[str, Any]) -> None:
        """Buffer one record; it holds `event` and no ts, level, logger, prompt or secret."""
        # The shared head spliced in front of the record's own object: no dict copy per request.
        self.stream.write(b'{"ts":%.3f,' % time.time() + self._fixed + orjson.dumps(record)[1:]
                          + b"\n")

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass
