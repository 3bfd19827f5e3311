"""Backends that run Jupyter servers: the shared interface and its implementations."""
