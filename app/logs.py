"""Logging: one format for the app and uvicorn, with the id of the request being handled on every line.

The HTTP layer sets `request_id_var` once per request (app/api/middleware.py, HardeningMiddleware);
`RequestIdFilter` writes it on every log record of that request.
"""

from __future__ import annotations

import contextvars
import logging

NO_REQUEST = "-"  # the request id of log lines emitted outside any request (startup, batches, shutdown)

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default=NO_REQUEST)


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id`: the id of the request being handled, '-' outside requests."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def logging_config(level: str) -> dict:
    """dictConfig for the app and uvicorn alike: one format with the request id on every line, to stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": {"format": LOG_FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
    }
