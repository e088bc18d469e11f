"""Gunicorn entry point: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Imported in each worker after the fork (``preload_app`` stays off: TensorFlow hangs in a
forked child whose parent already initialised it), so every worker loads its own model.
A missing or broken model, or a missing SECRET_KEY, stops the service with one line.
"""

import os
import sys

from server import create_app
from server.predictor import ModelLoadError

if not os.environ.get("SECRET_KEY"):
    sys.stderr.write("error: SECRET_KEY is not set; production needs a fixed secret (e.g. `export SECRET_KEY=$(openssl rand -hex 32)`).\n")
    sys.exit(3)  # gunicorn treats exit code 3 as a boot error and stops instead of respawning

try:
    app = create_app()
except ModelLoadError as exc:
    sys.stderr.write(f"error: {exc}\n")
    sys.exit(3)
