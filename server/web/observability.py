"""Per-request id, security headers and the no-store rule, added to every response by ``after_request``.

The request id ties one access-log line (gunicorn logs the ``X-Request-ID`` response
header, see ``gunicorn.conf.py``) to what a user reports and to the app's own error log.
A client-supplied id is reused only when it is short and plain, so it cannot inject text
into log lines. Nothing here reads or logs the upload itself or its filename.
"""

from __future__ import annotations

import re
import secrets
import uuid

from flask import Flask, g, has_request_context, request

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id_from(incoming: str | None) -> str:
    """Reuse a caller's id if it is safe to log verbatim, otherwise mint a new one."""
    if incoming and _SAFE_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def content_security_policy(nonce: str) -> str:
    """Only our own origin may supply scripts, styles, fonts and frames; no one may frame us.

    ``img-src data:`` is needed because the result page embeds the screened photo as a
    data: URI thumbnail (never stored on the server). The nonce lets a template carry one
    small inline ``<style>``/``<script>`` (``{{ csp_nonce() }}``) without 'unsafe-inline'.
    """
    return (
        "default-src 'self'; "
        f"script-src 'self' 'nonce-{nonce}'; "
        f"style-src 'self' 'nonce-{nonce}'; "
        "img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer breaks Flask-WTF's HTTPS Referer check
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate CSP 2
}


PREDICT_PATH = "/predict"


def private_answer() -> bool:
    """Whether this answer is personal health data that browsers and proxies must not keep.

    Every answer to an upload (a POST: a result page, a report, JSON, or why the photo was
    refused) is about someone's lesion, and so is every answer on ``/predict``, errors included.
    """
    return request.method == "POST" or request.path == PREDICT_PATH


def csp_nonce() -> str:
    """The current request's nonce (made on first use, so every response has its own)."""
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return g.csp_nonce


def current_request_id() -> str | None:
    return g.get("request_id") if has_request_context() else None


def _start_request() -> None:
    g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))


def _finish_response(response):
    response.headers[REQUEST_ID_HEADER] = g.get("request_id") or request_id_from(None)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Content-Security-Policy", content_security_policy(csp_nonce()))
    if private_answer():
        response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    """Register the hooks and the ``csp_nonce()`` template helper on ``app``."""
    app.before_request(_start_request)
    app.after_request(_finish_response)
    app.jinja_env.globals["csp_nonce"] = csp_nonce
