"""Gateway fixtures; the helpers live in gwrig.py."""

from __future__ import annotations

from tests.gateway.gwrig import start_gateway, start_standin

__all__ = ["start_gateway", "start_standin"]
