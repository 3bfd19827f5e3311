"""The coordinator: login, users, the spawn API and projections of the log into SQL."""
