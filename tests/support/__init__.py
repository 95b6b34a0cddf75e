"""Shared test helpers: loopback servers and service fixtures."""
