"""The event log: envelope, signing, stores (JetStream and in-memory) and projections."""
