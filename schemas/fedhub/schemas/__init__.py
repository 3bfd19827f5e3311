"""Shared language of fedhub: names, event payloads and API models (no I/O here)."""
