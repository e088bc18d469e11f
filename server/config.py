"""Settings, read from the environment (12-factor, as microblog does).

Every setting is documented in the README. ``create_app(config)`` lets tests override any
of them with a plain dict.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from server.filing import report_timezone

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_PATH = ROOT / "saved_models" / "ham10000_mobilenetv2.h5"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number") from None


# Per client address, so a clinic behind one NAT address shares each budget. 60 screenings a
# minute is one a second, sustained: about ten times what a busy clinic's staff upload together
# at their peak. Each result page offers two reports (text, PDF), hence twice as many downloads.
DEFAULT_RATE_LIMITS = {"RATE_LIMIT": "60/minute", "REPORT_RATE_LIMIT": "120/minute"}
OFF = "off"


def rate_limit_problem(raw: str, name: str = "RATE_LIMIT") -> str | None:
    """Why ``raw`` is not a Flask-Limiter rate ("60/minute", "5/second;100/hour") or ``off``, or None."""
    if not raw.strip() or raw.strip().lower() == OFF:
        return None
    from limits import parse_many

    try:
        parse_many(raw.strip())
    except ValueError:
        return f"{name}={raw!r} is not a rate such as '60/minute' (or 'off')."
    return None


def active_rate(value: str | None) -> str | None:
    """The rate a limit setting enforces, or None when it is ``off``."""
    value = (value or "").strip()
    return None if not value or value.lower() == OFF else value


def _env_rate(name: str) -> str:
    """A rate limit from the environment: empty or unset gives the default, ``off`` turns it off."""
    raw = os.environ.get(name, "")
    problem = rate_limit_problem(raw, name)
    if problem:
        raise SystemExit(problem)
    return raw.strip() or DEFAULT_RATE_LIMITS[name]


def timezone_problem(raw: str) -> str | None:
    """Why ``raw`` is not a ``REPORT_TIMEZONE`` (an IANA zone name; empty: UTC), or None."""
    try:
        report_timezone(raw)
    except ValueError as exc:
        return str(exc)
    return None


def _env_timezone(name: str = "REPORT_TIMEZONE") -> str:
    """The reports' local time zone: an IANA name, checked at start-up so a typo cannot wait for the first report."""
    raw = os.environ.get(name, "").strip()
    problem = timezone_problem(raw)
    if problem:
        raise SystemExit(problem)
    return report_timezone(raw).key


def onnx_cache_dir() -> str:
    """Where converted ONNX graphs are cached: ``ONNX_CACHE_DIR``, else ``$XDG_CACHE_HOME`` (or
    ``~/.cache``)/lesion-screening/onnx; ``ONNX_CACHE_DIR=off`` turns the cache off ("")."""
    raw = os.environ.get("ONNX_CACHE_DIR", "").strip()
    if raw.lower() in ("off", "0", "none"):
        return ""
    if raw:
        return raw
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "lesion-screening" / "onnx")


def config_from_env() -> dict:
    """Build the Flask config dict from environment variables."""
    max_upload_mb = _env_int("MAX_UPLOAD_MB", 10)
    return {
        "MODEL_PATH": os.environ.get("MODEL_PATH", str(DEFAULT_MODEL_PATH)),
        "MODEL_CARD_PATH": os.environ.get("MODEL_CARD_PATH") or None,
        "MAX_UPLOAD_MB": max_upload_mb,
        # Werkzeug refuses bodies over this with 413 before the view reads them.
        "MAX_CONTENT_LENGTH": max_upload_mb * 1024 * 1024 + 64 * 1024,  # + room for multipart framing
        "SECRET_KEY": os.environ.get("SECRET_KEY") or None,
        # The session cookie (CSRF secret, report binding) never rides a cross-site request;
        # it is also Secure whenever the request came over HTTPS (server/web/transport.py).
        "SESSION_COOKIE_SAMESITE": "Lax",
        "TF_INTRA_OP_THREADS": _env_int("TF_INTRA_OP_THREADS", 0),
        # auto: ONNX Runtime converted from the .h5 when it matches TensorFlow, else TensorFlow.
        "INFERENCE_RUNTIME": os.environ.get("INFERENCE_RUNTIME", "auto"),
        # float32 | int8 | auto: the int8 graphs beside the .h5 (training.quantize) when its card records that
        # they met the accuracy bar against float32 (training.int8_bar); see server/model/precision.py.
        "INFERENCE_PRECISION": os.environ.get("INFERENCE_PRECISION", "auto"),
        # Converted ONNX graphs, keyed by the .h5's sha256, so a worker start skips tf2onnx ("" = off).
        "ONNX_CACHE_DIR": onnx_cache_dir(),
        "TF_INTER_OP_THREADS": _env_int("TF_INTER_OP_THREADS", 0),
        "LOAD_MODEL": os.environ.get("LOAD_MODEL", "1") != "0",
        # Test-time augmentation: auto (the model card's measured choice) | off | flips | full.
        "TTA": os.environ.get("TTA", "auto"),
        # The non-skin check (model card's feature statistics); OOD_CHECK=0 turns it off.
        "OOD_CHECK": os.environ.get("OOD_CHECK", "1") != "0",
        # Never debug from the environment: Flask would otherwise read FLASK_DEBUG=1 and run
        # the production app in debug mode. Tests and `flask --debug` can still override it.
        "DEBUG": False,
        # Per-client limits (Flask-Limiter syntax; "off" turns one off): screening (POST /predict and
        # /screen share it) and report downloads. Keyed on the client address; counted in
        # RATE_LIMIT_STORAGE_URI, shared by every worker (server/web/scaleout.py, shared_counts.py).
        "RATE_LIMIT": _env_rate("RATE_LIMIT"),
        "REPORT_RATE_LIMIT": _env_rate("REPORT_RATE_LIMIT"),
        "RATE_LIMIT_STORAGE_URI": os.environ.get("RATE_LIMIT_STORAGE_URI") or "memory://",  # redis://... for several hosts
        "TRUSTED_PROXY_HOPS": _env_int("TRUSTED_PROXY_HOPS", 0),  # 1 behind deploy/nginx.conf (server/web/scaleout.py)
        # Seconds a request body may stall between two reads under gunicorn before the
        # client is answered 408 and disconnected (a slowloris upload must not hold a thread).
        "UPLOAD_READ_TIMEOUT": _env_float("UPLOAD_READ_TIMEOUT", 10.0),
        # Seconds the whole body may take under gunicorn, however steadily it trickles (0: no bound).
        "UPLOAD_BODY_TIMEOUT": _env_float("UPLOAD_BODY_TIMEOUT", 30.0),
        # The time zone the reports give the local time in, beside UTC (an IANA name; default UTC).
        "REPORT_TIMEZONE": _env_timezone(),
    }


def predictor_options(config: dict) -> dict:
    """``Predictor.from_path``'s keywords from a config: how the service and the folder CLI both load
    a model, so a batch row answers what the API would."""
    return {"runtime": config["INFERENCE_RUNTIME"], "threads": config["TF_INTRA_OP_THREADS"], "tta": config.get("TTA"),
            "ood": config.get("OOD_CHECK", True), "onnx_cache": config.get("ONNX_CACHE_DIR") or None,
            "precision": config.get("INFERENCE_PRECISION")}


def absolute_model_paths(config: dict) -> None:
    """Make MODEL_PATH and MODEL_CARD_PATH absolute, against the directory the service starts in.

    ``make run`` passes a relative MODEL_PATH. Read as it is, it names one file when a page checks
    it (against the working directory) and another when a route serves from its folder (Flask's
    ``send_from_directory`` resolves a relative folder against the app's package), so the path is
    pinned once, here, before anything reads it.
    """
    for key in ("MODEL_PATH", "MODEL_CARD_PATH"):
        if config.get(key):
            config[key] = os.path.abspath(config[key])


def ensure_secret_key(config: dict) -> None:
    """Give development runs a random key; the key signs report links and CSRF tokens.

    A random per-process key means links signed by one gunicorn worker fail on another, so
    production (``wsgi.py``) requires SECRET_KEY to be set and refuses to start without it.
    """
    if not config.get("SECRET_KEY"):
        config["SECRET_KEY"] = secrets.token_hex(32)
