"""edgecloud.report."""
