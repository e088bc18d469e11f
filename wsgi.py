"""Gunicorn entry point: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Imported in each worker after the fork (``preload_app`` stays off: TensorFlow hangs in a
forked child whose parent already initialised it), so every worker loads its own model.
A missing or broken model, or a missing SECRET_KEY, stops the service with one line.
"""

import os
import sys

# Before TensorFlow is first imported: keep its C++ start-up chatter out of the one-line
# boot errors below (gunicorn.conf.py sets the same default).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from server import create_app  # noqa: E402
from server.boot import boot_problem  # noqa: E402
from server.model.files import ModelLoadError  # noqa: E402

_problem = boot_problem(os.environ)
if _problem:
    sys.stderr.write(f"error: {_problem}\n")
    sys.exit(3)  # gunicorn treats exit code 3 as a boot error and stops instead of respawning

try:
    app = create_app()
except ModelLoadError as exc:
    sys.stderr.write(f"error: {exc}\n")
    sys.exit(3)
