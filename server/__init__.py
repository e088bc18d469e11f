"""The screening service: ``create_app()`` builds a Flask app (flaskr-style factory)."""

from __future__ import annotations

import logging
import os

from flask import Flask

from server.config import ROOT, absolute_model_paths, config_from_env, ensure_secret_key
from server.filing import report_timezone

# ONNX Runtime (1.29+ on Linux) otherwise keeps a telemetry event database (a device id, the
# Python path, graph names, timings) under ~/.cache/Microsoft/DeveloperTools/. A service that
# holds patients' photos keeps no such file. Set here, before any server module can import
# onnxruntime (each does so through this package); an operator's explicit value wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def create_app(config: dict | None = None) -> Flask:
    """Build the app from the environment, overridden by ``config`` (tests pass a dict).

    Loads the model when LOAD_MODEL is true (the default), so a missing or broken model
    fails here, once, with a ModelLoadError naming the path, rather than on every request.
    """
    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"))
    from server.web.uploads import InMemoryRequest

    app.request_class = InMemoryRequest  # uploads never touch the disk
    app.config.update(config_from_env())
    if config:
        app.config.update(config)
        if "MAX_UPLOAD_MB" in config and "MAX_CONTENT_LENGTH" not in config:
            app.config["MAX_CONTENT_LENGTH"] = config["MAX_UPLOAD_MB"] * 1024 * 1024 + 64 * 1024
    absolute_model_paths(app.config)
    app.config["REPORT_TIMEZONE"] = report_timezone(app.config.get("REPORT_TIMEZONE")).key  # a bad name: ValueError
    ensure_secret_key(app.config)
    server_log = logging.getLogger("server")
    server_log.setLevel(logging.INFO)
    if not server_log.handlers and not logging.getLogger().handlers:  # under gunicorn: its lines beside gunicorn's
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"))
        server_log.addHandler(handler)

    from server.web import api, errors, observability, pages, scaleout, transport
    from server.web.service import init_predictor

    observability.init_app(app)
    scaleout.init_app(app)  # behind a proxy: the client's address from X-Forwarded-For
    transport.init_app(app)  # Secure cookies and HSTS over HTTPS
    app.register_blueprint(errors.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    # Forms carry CSRF tokens; the JSON API is for non-browser clients (curl) and is exempt.
    # Report downloads are exempt too: they only render what their encrypted token holds, and
    # that token is bound to the same session cookie the CSRF token lives in.
    from flask_wtf.csrf import CSRFProtect

    csrf = CSRFProtect(app)
    csrf.exempt(api.bp)
    csrf.exempt(pages.report)
    scaleout.limit_rates(app)  # per client: screening, and report downloads
    if app.config["LOAD_MODEL"]:
        init_predictor(app)
    return app
