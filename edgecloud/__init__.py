"""edgecloud: run an AI model where it runs best - on the edge or in the cloud - per request."""

__version__ = "0.1.0"

from edgecloud.compiled import install_guard

install_guard()  # a compiled build that no longer matches the sources is not used
