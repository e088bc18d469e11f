"""The service's one error type (``server.problems.ServiceError``), answered as JSON for API clients and HTML for browsers.

Every failure a client can cause ends here as ``{"error": {"code", "message"}}`` with a
fitting status, so integrators can branch on ``code`` and people read ``message``.
"""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from server.problems import ServiceError

log = logging.getLogger(__name__)
bp = Blueprint("errors", __name__)


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_error",
    503: "model_unavailable",
}


def wants_json() -> bool:
    """API paths and clients that prefer JSON get JSON; browsers get the HTML error page."""
    if request.path.startswith(("/predict", "/api/", "/healthz", "/readyz", "/openapi.json")):
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def error_response(status: int, code: str, message: str, details: dict | None = None):
    if wants_json():
        return jsonify(error={"code": code, "message": message, **(details or {})}), status
    return render_template("error.html", status=status, code=code, message=message), status


@bp.app_errorhandler(ServiceError)
def handle_service_error(exc: ServiceError):
    """Every client-caused failure, an upload that cannot be screened (``ImageRejected``) included."""
    return error_response(exc.status, exc.code, exc.message, exc.details)


@bp.app_errorhandler(HTTPException)
def handle_http_exception(exc: HTTPException):
    status = exc.code or 500
    message = exc.description or exc.name
    if status == 413:
        from server.web.uploads import too_large_message

        message = too_large_message(exc)
    elif status == 429:  # Flask-Limiter's description is the limit itself, e.g. "60 per 1 minute"
        message = f"Too many requests from this client (limit: {message}). Wait and try again (see Retry-After)."
    body, status = error_response(status, _HTTP_CODES.get(status, exc.name.lower().replace(" ", "_")), message)
    return body, status, protocol_headers(exc)


def protocol_headers(exc: HTTPException) -> dict:
    """Headers HTTP requires on some errors (``Allow`` on 405, ``Retry-After`` on 429/503).

    Werkzeug puts them on its own response; rebuilding the body as JSON must not drop them.
    """
    return {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}


@bp.app_errorhandler(Exception)
def handle_unexpected(exc: Exception):
    from server.web.observability import current_request_id

    log.exception("unhandled error on %s %s (request id %s)", request.method, request.path, current_request_id())
    return error_response(500, "internal_error", "The server hit an unexpected error. Please try again.")
