"""edgecloud.deploy."""
