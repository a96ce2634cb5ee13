"""edgecloud.demo."""
