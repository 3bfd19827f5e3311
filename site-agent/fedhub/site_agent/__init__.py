"""The site agent: starts users' Jupyter servers at one site, driven by the event log."""
