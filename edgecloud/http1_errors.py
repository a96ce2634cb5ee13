"""The upstream client's errors (http1.py). Their own module because http1.py is compiled
(edgecloud/compiled.py), and mypyc cannot compile a subclass of OSError."""

from __future__ import annotations


class UpstreamError(OSError):
    """The server could not be reached, or broke off or garbled its answer."""


class ProtocolError(UpstreamError):
    """The answer is not readable HTTP/1.1 (or the server switched protocols)."""


class ConnectionDropped(UpstreamError):
    """The connection closed before the answer was complete."""
