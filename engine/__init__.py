"""The delivery engine: everything between the API and the providers."""
