"""Gateway fixtures; the helpers live in gwrig.py."""

from gwrig import start_gateway, start_standin

__all__ = ["start_gateway", "start_standin"]
