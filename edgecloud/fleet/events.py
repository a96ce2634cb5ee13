"""The fleet's events in the shared log shape (`edgecloud.logs`), on the edgecloud.fleet logger."""

from __future__ import annotations

import logging
from typing import Any

from edgecloud.logs import log_event as _log_event

logger = logging.getLogger("edgecloud.fleet")


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one fleet event with its fields (never a secret: mask URLs with `masked_url`)."""
    _log_event(logger, event, level, **fields)
