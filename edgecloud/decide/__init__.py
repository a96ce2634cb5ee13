"""edgecloud.decide."""
