"""Coordinator errors, each mapped to one HTTP status by the API layer.

CoordinatorError
├── BadRequest        400: invalid names, options or state (message says which)
├── Unauthorized      401/403: not logged in, or not allowed
│   └── Forbidden     403
├── NotFound          404: unknown user, server, site or token
├── Conflict          409: already exists / changed concurrently
├── TooManyRequests   429: too many failed logins (``retry_after`` seconds)
└── Unavailable       503: the log (NATS) or a site cannot be reached
"""

from __future__ import annotations


class CoordinatorError(Exception):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(CoordinatorError):
    status = 400


class Unauthorized(CoordinatorError):
    status = 401


class Forbidden(Unauthorized):
    status = 403


class NotFound(CoordinatorError):
    status = 404


class Conflict(CoordinatorError):
    status = 409


class TooManyRequests(CoordinatorError):
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(CoordinatorError):
    status = 503
