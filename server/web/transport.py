"""HTTPS as the client saw it: Secure session cookies and HSTS on answers served over HTTPS.

The session cookie carries the form's CSRF secret and the report tokens' binding, so it is
``SameSite=Lax`` always (config) and ``Secure`` whenever this request came over HTTPS: directly,
or through a proxy the service trusts (``TRUSTED_PROXY_HOPS``, whose ``X-Forwarded-Proto``
Werkzeug's ProxyFix turns into the request's scheme; see ``server/web/scaleout.py``). A plain
HTTP answer (``make run`` on loopback) cannot carry a Secure cookie: the browser would drop it.
"""

from __future__ import annotations

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface

HSTS = "max-age=31536000"  # one year; no includeSubDomains: the operator's other hosts are not ours to pin


class TransportAwareSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie session, made Secure per request instead of per deployment."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config.get("SESSION_COOKIE_SECURE")) or request.is_secure


def _strict_transport(response):
    """Browsers honour HSTS only over HTTPS; sent on every HTTPS answer, so one visit pins it."""
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    return response


def init_app(app: Flask) -> None:
    app.session_interface = TransportAwareSessions()
    app.after_request(_strict_transport)
