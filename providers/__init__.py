"""Provider modules and the explicit registry."""
