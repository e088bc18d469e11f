"""What changes when the service runs on several hosts behind a load balancer (issue #17).

- **The rate-limit count is shared.** ``RATE_LIMIT_STORAGE_URI`` names Flask-Limiter's
  storage. Unset, one host counts once: in memory with one worker, in memory every worker
  maps when gunicorn runs several (``server/web/shared_counts.py``). Set to e.g.
  ``redis://10.0.0.5:6379/0``, every worker on every host counts against the same budget.
  If that storage stops answering, each worker falls back to counting in its own memory
  (a warning is logged) and goes back to it when it answers again: screening stays
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

    from server.web import shared_counts  # noqa: F401  registers workers:// with limits

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
    shared = uri.split(":", 1)[0] not in ("memory", "workers")  # a store that can stop answering: Redis
    return {"storage_uri": uri, "in_memory_fallback_enabled": shared, "key_prefix": "lesion-screening"}


# Each budget: the setting that sets it, and the endpoints that spend it.
RATE_BUDGETS = {
    "screening": ("RATE_LIMIT", ("api.predict", "pages.screen")),  # both ways to run the model: one budget
    "reports": ("REPORT_RATE_LIMIT", ("pages.report",)),  # a PDF costs about 40 ms of CPU too
}


def limit_rates(app) -> None:
    """Put each per-client budget on its endpoints; a budget set ``off`` spends nothing."""
    from server.config import active_rate

    budgets = {scope: (active_rate(app.config.get(name)), endpoints) for scope, (name, endpoints) in RATE_BUDGETS.items()}
    if not any(rate for rate, _ in budgets.values()):
        return
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    from server.web import shared_counts  # noqa: F401  registers workers:// with limits

    limiter = Limiter(get_remote_address, app=app, headers_enabled=True, **limiter_options(app.config))
    for scope, (rate, endpoints) in budgets.items():
        if rate:
            limit = limiter.shared_limit(rate, scope=scope)
            for endpoint in endpoints:
                app.view_functions[endpoint] = limit(app.view_functions[endpoint])


def init_app(app) -> None:
    """Trust ``TRUSTED_PROXY_HOPS`` proxies' X-Forwarded-For/-Proto (0, the default: none)."""
    hops = int(app.config.get("TRUSTED_PROXY_HOPS") or 0)
    if hops > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
