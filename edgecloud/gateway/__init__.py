"""edgecloud.gateway."""
