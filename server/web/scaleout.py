"""What changes when the service runs on several hosts behind a load balancer (issue #17).

- **The rate-limit count is shared.** ``RATE_LIMIT_STORAGE_URI`` (default ``memory://``:
  one count per worker process, right for one host) names Flask-Limiter's storage, e.g.
  ``redis://10.0.0.5:6379/0``: every worker on every host then counts against the same
  budget. If that storage stops answering, each worker falls back to counting in its own
  memory (a warning is logged) and goes back to it when it answers again: screening stays
  available, with the limit per worker meanwhile.
- **The client's address comes from the proxy.** Behind nginx every request comes from
  nginx's address, so a per-client limit would be one limit for everybody.
  ``TRUSTED_PROXY_HOPS=1`` makes the service trust the last ``X-Forwarded-For`` and
  ``X-Forwarded-Proto`` entries (Werkzeug's ProxyFix), which ``deploy/nginx.conf`` sets to
  the connecting client. Leave it at 0 unless a proxy you run is the only way in: with it
  set, a client that reaches the service directly can claim any address.
"""

from __future__ import annotations

MEMORY = "memory://"


def storage_problem(uri: str) -> str | None:
    """Why ``uri`` is not a rate-limit storage this install can use, as one sentence, or None.

    Cheap (no connection is made), so the gunicorn master can run it before forking.
    """
    from limits.errors import ConfigurationError
    from limits.storage import storage_from_string

    if not uri or uri == MEMORY:
        return None
    try:
        storage_from_string(uri)
    except ConfigurationError as exc:
        return f"RATE_LIMIT_STORAGE_URI={uri!r} cannot be used: {exc} (e.g. redis://127.0.0.1:6379/0)."
    return None


def limiter_options(config) -> dict:
    """Flask-Limiter's storage settings for ``config``: shared storage falls back to memory while it is down."""
    uri = config.get("RATE_LIMIT_STORAGE_URI") or MEMORY
    shared = uri != MEMORY
    return {"storage_uri": uri, "in_memory_fallback_enabled": shared, "key_prefix": "lesion-screening"}


def init_app(app) -> None:
    """Trust ``TRUSTED_PROXY_HOPS`` proxies' X-Forwarded-For/-Proto (0, the default: none)."""
    hops = int(app.config.get("TRUSTED_PROXY_HOPS") or 0)
    if hops > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
