"""edgecloud: run an AI model where it runs best - on the edge or in the cloud - per request."""

__version__ = "0.1.0"
