"""Start-up checks cheap enough to run in gunicorn's master, before any worker forks.

Gunicorn 27's arbiter prints a traceback when several workers fail to boot at once, so a
missing SECRET_KEY or model file is caught here first (``on_starting`` in
gunicorn.conf.py, and again in wsgi.py for other servers) and reported as ONE line.
Nothing here imports TensorFlow: the master must stay TF-free to fork safely. The model check covers
the card and the file's sha256; only a file that matches its card yet fails to load is
left to the workers.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from server.config import DEFAULT_MODEL_PATH, rate_limit_problem, timezone_problem
from server.model.files import ModelLoadError, check_model_files
from server.web.scaleout import storage_problem

SECRET_KEY_MISSING = (
    "SECRET_KEY is not set; production needs a fixed secret (e.g. `export SECRET_KEY=$(openssl rand -hex 32)`)."
)


def boot_problem(environ) -> str | None:
    """The first reason this environment cannot serve, as one sentence, or None."""
    if not environ.get("SECRET_KEY"):
        return SECRET_KEY_MISSING
    rate_problems = [rate_limit_problem(environ.get(name, ""), name) for name in ("RATE_LIMIT", "REPORT_RATE_LIMIT")]
    rate_problem = next(filter(None, rate_problems), None) or storage_problem(environ.get("RATE_LIMIT_STORAGE_URI", ""))
    if rate_problem:
        return rate_problem
    zone_problem = timezone_problem(environ.get("REPORT_TIMEZONE", ""))
    if zone_problem:
        return zone_problem
    model_path = Path(environ.get("MODEL_PATH") or DEFAULT_MODEL_PATH)
    try:
        check_model_files(model_path, environ.get("MODEL_CARD_PATH") or None)
    except ModelLoadError as exc:
        return str(exc)
    return None


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or 0.0.0.0 / :: (every interface)


def exposure_problem(binds: list[str], trusted_proxy_hops: int) -> str | None:
    """Why gunicorn must not listen on ``binds`` as configured, as one sentence, or None.

    Gunicorn reads request bodies unbuffered, in its request threads: clients trickling uploads
    can hold every thread (upload bounds in ``server/web/slow_uploads.py`` only limit how long).
    So it takes clients directly on loopback only; beyond it, a buffering proxy must be in front,
    which ``TRUSTED_PROXY_HOPS`` >= 1 declares (deploy/nginx.conf.template is one).
    """
    if trusted_proxy_hops >= 1:
        return None
    exposed = [b for b in binds if not b.startswith(("unix:", "fd://")) and not _loopback(b.rsplit(":", 1)[0])]
    if not exposed:
        return None
    return (f"refusing to listen on {', '.join(exposed)} without a proxy in front: gunicorn does not buffer uploads, so "
            "slow clients could hold every worker thread. Put nginx in front (deploy/) and set TRUSTED_PROXY_HOPS=1, "
            "or listen on 127.0.0.1 (HOST).")
