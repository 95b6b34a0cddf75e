"""Rule files to decisions. Pure: no Redis, no database, no HTTP, no clock, no environment."""
