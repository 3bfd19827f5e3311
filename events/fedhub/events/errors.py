"""Errors of the event log.

EventLogError
├── ConcurrencyError      the subject's last sequence was not the expected one
├── MalformedEvent        bytes in the stream that are not a valid envelope or payload
│   └── UnknownEventType  a well-formed envelope whose type this version does not know
├── ConsumerMismatch      a durable consumer exists with another filter than asked for
├── InvalidSignature      an envelope or token whose signature does not verify
│   └── InvalidToken      a token that is malformed, expired, revoked or of the wrong kind
└── StoreUnavailable      the store (NATS) could not be reached or answered with an error
"""

from __future__ import annotations


class EventLogError(Exception):
    """Base of every error raised by fedhub.events."""


class ConcurrencyError(EventLogError):
    """Raised by append when the subject moved past the expected sequence."""

    def __init__(self, subject: str, expected: int, actual: int | None = None) -> None:
        self.subject = subject
        self.expected = expected
        self.actual = actual
        super().__init__(f"{subject}: expected last sequence {expected}, found {actual}")


class MalformedEvent(EventLogError):
    """Raised when stored bytes cannot be decoded into a known, valid event."""


class UnknownEventType(MalformedEvent):
    """Raised when an envelope's type is not in the catalog."""


class ConsumerMismatch(EventLogError):
    """Raised by consume when the durable name is taken by a consumer of other subjects."""


class InvalidSignature(EventLogError):
    """Raised when a signature does not verify against the enrolled keys."""


class InvalidToken(InvalidSignature):
    """Raised for a bad, expired, revoked or mis-typed session token, API token or assertion."""


class StoreUnavailable(EventLogError):
    """Raised when the store cannot be reached."""
