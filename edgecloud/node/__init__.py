"""edgecloud.node."""
