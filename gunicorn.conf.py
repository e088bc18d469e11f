"""Gunicorn settings for the screening service: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Workers and TF threads: issue #2 measured two worker processes with ONE TensorFlow
intra-op thread each as best for MobileNetV2 on 2 cores. Re-measured with
``bench/bench_predict.py --start --synthetic`` (untrained MobileNetV2 224, 600x450 JPEG,
32 requests per level) while a training job shared the CPU: 2 workers x 1 TF thread gave
24.5 / 20.6 / 26.1 req/s at concurrency 1 / 4 / 16, 1 worker x 2 TF threads 28.2 / 23.2 /
27.8: within the noise of a loaded machine, so the issue's choice stands; two processes
also keep serving when one is busy or restarting. Re-run the bench on an idle machine
before changing it. Every setting can be overridden by the environment.

Slow clients: gunicorn itself does not buffer request bodies, and gthread reads a body on a
blocking socket with no timeout. Measured (issue #7): two uploads that sent their headers
and 2 KB of a 500 KB body, then stalled, made every other request time out, for as long
as the two clients stayed connected. Three settings now bound that:

- ``UPLOAD_READ_TIMEOUT`` (app setting, default 10 s): a body read that waits longer than
  this is answered 408 ``request_timeout`` and the connection closes (server/web/uploads.py).
- ``threads`` 4 per worker (was 2): up to 3 stalled uploads cannot occupy a whole worker,
  so others are served at once; with 8 stalled (every thread), a request waited 9.5 s
  until the read timeout freed a thread, instead of forever.
- ``timeout`` only restarts a worker whose main loop stops answering; it never cuts off a
  slow client under gthread.

- ``UPLOAD_BODY_TIMEOUT`` (app setting, default 30 s, #38): the whole body, however steadily
  it trickles (16 clients sending a byte every 5 s had held all 8 threads indefinitely).

Still unbounded here: a client that never finishes its request headers (gunicorn reads
headers without a timeout), and more slow clients than threads, which delay others up to
the bounds above. So the master refuses to listen beyond loopback unless
``TRUSTED_PROXY_HOPS`` declares a buffering proxy in front (nginx with
``client_max_body_size 11m``, ``client_body_timeout``/``client_header_timeout`` and request
buffering on, as gunicorn's own deployment guide advises; ``server/boot.py``).
"""

import os
import sys

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"

# Processes x threads: 2 workers (one per core), each with 4 request threads so a slow
# upload or a probe never waits behind an inference in the same process (see above).
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))

# One TF thread per op per worker (measured best, see above). setdefault, so an operator's
# explicit value wins; gunicorn's raw_env would override it. Read by server.config in
# each worker when the app is built (after the fork: preload_app stays off because
# TensorFlow hangs in a child forked after it initialised).
os.environ.setdefault("TF_INTRA_OP_THREADS", "1")
os.environ.setdefault("TF_INTER_OP_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# numpy's OpenBLAS starts a thread per core and lets it spin after every matrix product
# (the non-skin check's Mahalanobis distances): measured with the shipped model, a 600x450
# upload and 2 workers, the workers burned 26.2 ms of CPU per request at c=1 (p50 13.2 ms)
# with it, 12.9 ms with one thread; c=16 went from 84 to 137 req/s. Set before the workers
# import numpy (preload_app is off).
for _blas in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_blas, "1")
preload_app = False

# A prediction takes well under a second; 30 s also covers the model load at boot.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5

# Request-head limits (the body limit is Flask's MAX_CONTENT_LENGTH, answered with 413).
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190

# Gunicorn 23+ opens a control socket at ~/.gunicorn/gunicorn.ctl by default. Nothing here
# uses it, and two instances on one host (a test server beside `make run`) would fight
# over that one path, so it is off.
control_socket_disable = True

# Structured access log, one JSON object per line. It names the request id (the
# X-Request-ID response header set by server.web.observability), never a query string,
# filename or any upload byte. %(M)s is the duration in milliseconds.
accesslog = os.environ.get("ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
access_log_format = (
    '{"time": "%(t)s", "request_id": "%({x-request-id}o)s", "method": "%(m)s", "path": "%(U)s", '
    '"status": %(s)s, "bytes": %(B)s, "duration_ms": %(M)s, "pid": "%(p)s"}'
)


def on_starting(server):
    """Refuse to start, in one line, before forking workers that would all fail the same way."""
    from server.boot import boot_problem, exposure_problem

    problem = boot_problem(os.environ) or exposure_problem(server.cfg.bind, int(os.environ.get("TRUSTED_PROXY_HOPS") or 0))
    if problem:
        sys.stderr.write(f"error: {problem}\n")
        sys.exit(3)
    # Several workers must spend one rate-limit budget, not one each: unless an operator named a
    # shared store (Redis), they count in memory this master makes and every worker inherits.
    from server.web.shared_counts import share_across_workers

    if share_across_workers(os.environ, server.cfg.workers):
        server.log.info("rate limits: one count shared by the %d workers (memory)", server.cfg.workers)
