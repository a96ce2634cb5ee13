"""Structured logs of edgecloud.fleet: one JSON object per event, no secrets, no prompts."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

logger = logging.getLogger("edgecloud.fleet")


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with its fields as a JSON object."""
    if logger.isEnabledFor(level):
        logger.log(level, json.dumps({"ts": round(time.time(), 3), "event": event, **fields}))


def setup_json_logging(level: int = logging.INFO) -> None:
    """Send fleet events to stderr, one JSON line each (for the CLI entry points)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
