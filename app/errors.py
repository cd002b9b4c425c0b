"""The few domain errors. The API layer maps each to one HTTP status in one place
(app/api/error_handlers.py)."""

from __future__ import annotations

from app.config import default_of


class RewardServiceError(Exception):
    """Base class: every error the service raises on purpose."""

    def __init__(self, message: str, details: list[dict] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []


class CheckpointError(RewardServiceError):
    """A model version is missing, corrupt, incompatible or fails its checks; it is never loaded."""


class InvalidInput(RewardServiceError):
    """Well-formed JSON that breaks a limit or a rule; `details` name the field and the limit."""


class Overloaded(RewardServiceError):
    """The queue is full; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ServerBusy(Overloaded):
    """Overloaded, told to a caller that retries server errors but never a 4xx (a trainer's fixed loop)."""


class NotReady(RewardServiceError):
    """No model is loaded and warmed up yet (or it cannot serve)."""

    def __init__(self, message: str, retry_after: int = default_of("retry_after_s")):
        super().__init__(message)
        self.retry_after = retry_after


class InferenceError(RewardServiceError):
    """The forward pass of a micro-batch failed; only that batch's items get this error."""


class RequestTimeout(RewardServiceError):
    """A request was still queued or computing after the configured request timeout."""


class Unauthorized(RewardServiceError):
    """An admin endpoint was called without the right bearer token."""


class AdminDisabled(RewardServiceError):
    """An admin endpoint was called but no admin token is configured."""


class NotFound(RewardServiceError):
    """The named resource (a namespace, a version) does not exist."""
