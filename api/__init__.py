"""Starlette application: public API, provider callbacks, admin API."""
