"""aiohttp logs a client's malformed request (two Content-Length headers, a bad method
line) as an ERROR with a full traceback: any client could fill the proxy's log with them.
The proxy's aiohttp server logs through ``LOGGER``, whose filter turns those into one INFO
line; the proxy's own failures stay errors."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

LOGGER = logging.getLogger("fedhub.edge_proxy.http")


class ClientErrors(logging.Filter):
    """A 4xx parse error from a client: INFO, one line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            record.msg = f"{record.getMessage()}: {exc.code} {exc.message}"
            record.args = ()
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
            return LOGGER.isEnabledFor(logging.INFO)  # as if it had been logged at INFO
        return True


LOGGER.addFilter(ClientErrors())
