"""edgecloud.bench."""
