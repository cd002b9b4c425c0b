"""Every error, from every endpoint, in one JSON shape: {"error": {"type", "message", "details", "code",
"param"}}. `code` (the HTTP status) and `param` (the first field at fault, dotted, or null) are what
OpenAI-style clients read. At most MAX_DETAILS details are sent, so an error body stays small whatever
the request.

The one place that maps domain errors to HTTP status codes.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import errors
from app.schemas import ErrorResponse

log = logging.getLogger(__name__)

# domain error -> (status, type); subclasses before their bases
DOMAIN_ERRORS: list[tuple[type[errors.RewardServiceError], int, str]] = [
    (errors.InvalidInput, 422, "validation_error"),
    (errors.ServerBusy, 503, "overloaded"),
    (errors.Overloaded, 429, "overloaded"),
    (errors.NotReady, 503, "not_ready"),
    (errors.InferenceError, 500, "inference_error"),
    (errors.RequestTimeout, 504, "timeout"),
    (errors.Unauthorized, 401, "unauthorized"),
    (errors.AdminDisabled, 403, "admin_disabled"),
    (errors.NotFound, 404, "not_found"),
    (errors.CheckpointError, 409, "checkpoint_error"),
    (errors.RewardServiceError, 500, "internal_error"),
]
HTTP_TYPES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large",
              415: "unsupported_media_type"}  # fmt: skip


MAX_DETAILS = 20  # details in one error body; the message says how many there were


def error_response(
    status: int, error_type: str, message: str, details: list | None = None, headers: dict | None = None
) -> JSONResponse:
    details = details or []
    if len(details) > MAX_DETAILS:
        message = f"{message} ({len(details)} errors; the first {MAX_DETAILS} are in details)"
    kept = jsonable_encoder(details[:MAX_DETAILS])
    body = {"error": {"type": error_type, "message": message, "details": kept, "code": status,
                      "param": param_of(kept)}}  # fmt: skip
    return JSONResponse(body, status_code=status, headers=headers)


def param_of(details: list[dict]) -> str | None:
    """The first field at fault, dotted without the 'body' prefix ("items.0.prompt"), as OpenAI's `param`."""
    loc = next((d["loc"] for d in details if isinstance(d, dict) and d.get("loc")), None)
    if not loc:
        return None
    path = loc[1:] if loc[0] == "body" and len(loc) > 1 else loc
    return ".".join(str(part) for part in path)


def status_of(exc: errors.RewardServiceError) -> tuple[int, str]:
    return next((status, kind) for cls, status, kind in DOMAIN_ERRORS if isinstance(exc, cls))


async def handle_domain_error(request: Request, exc: errors.RewardServiceError) -> JSONResponse:
    status, kind = status_of(exc)
    headers = {"Retry-After": str(exc.retry_after)} if hasattr(exc, "retry_after") else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    if status >= 500:
        log.warning("%s: %s", kind, exc.message)
    return error_response(status, kind, exc.message, exc.details, headers)


def describe_validation_error(error: dict) -> dict:
    """Pydantic's error, trimmed to what a client needs: where, what, and the limit when there is one."""
    ctx = error.get("ctx") or {}
    msg = error.get("msg", "")
    if error.get("type") == "json_invalid":
        msg = f"invalid JSON at character {error['loc'][-1]}: {ctx.get('error', 'cannot parse')}"
    detail = {"loc": list(error.get("loc", ())), "msg": msg, "type": error.get("type", "")}
    limits = {k: v for k, v in ctx.items() if k in ("ge", "gt", "le", "lt", "min_length", "max_length",
                                                     "expected", "pattern")}  # fmt: skip
    if limits:
        detail["limit"] = limits
    return detail


async def handle_request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [describe_validation_error(e) for e in exc.errors()]
    fields = ", ".join(".".join(str(p) for p in d["loc"]) + f": {d['msg']}" for d in details[:5])
    return error_response(422, "validation_error", f"invalid request: {fields}", details)


async def handle_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = HTTP_TYPES.get(exc.status_code, "http_error")
    details = getattr(exc, "details", None)
    return error_response(exc.status_code, kind, str(exc.detail), details, getattr(exc, "headers", None))


_traced: set[tuple[str, str, int]] = set()  # (type, file, line) of the errors logged with a traceback


def log_unexpected(path: str, exc: BaseException) -> None:
    """One line per unexpected error; its traceback only the first time that error is raised from that
    line: a client repeating a request that trips a bug must not write kilobytes of log per request."""
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = (type(exc).__name__, frame.tb_frame.f_code.co_filename, frame.tb_lineno) if frame else ("", "", 0)
    summary = " ".join(str(exc).split())[:200]
    first = where not in _traced
    _traced.add(where)
    note = "" if first else " (traceback logged before)"
    log.error("unhandled %s on %s: %s%s", where[0], path, summary, note, exc_info=exc if first else None)


def unexpected_error_response() -> JSONResponse:
    return error_response(500, "internal_error", "internal error; see the server log")


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log_unexpected(request.url.path, exc)
    return unexpected_error_response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.RewardServiceError, handle_domain_error)
    app.add_exception_handler(RequestValidationError, handle_request_validation)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(Exception, handle_unexpected)


ERROR_DESCRIPTIONS = {
    401: "Missing or wrong admin bearer token",
    403: "Admin endpoints disabled: no REWARD_ADMIN_TOKEN configured",
    404: "Not found",
    413: "Body larger than max_body_bytes",
    422: "Invalid input: details name the field and the limit",
    429: "Queue full: retry after Retry-After seconds",
    503: "No model loaded yet, or (trainer routes) the queue stayed full: retry after Retry-After seconds",
    504: "Not scored within request_timeout_s",
}


def error_docs(*statuses: int) -> dict:
    """OpenAPI `responses` for these statuses, all in the one error shape."""
    return {
        status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]} for status in statuses
    }
