"""Slow clients under gunicorn's gthread worker: every body read is bounded in time.

Gunicorn does not buffer request bodies: a request thread reads its body from the client's
socket as the app asks for it, so a client that sends slowly holds a thread. Two bounds
(issues #7 and #38):

- **Between two reads** (``UPLOAD_READ_TIMEOUT``, 10 s): a body that sends nothing for that
  long is answered 408 ``request_timeout``.
- **The whole body** (``UPLOAD_BODY_TIMEOUT``, 30 s): a client trickling one byte every few
  seconds never trips the first bound (measured, #38: 16 such clients held all 8 threads of
  2 workers and every ``/healthz`` timed out for 26 s, for as long as they went on). A timer
  shuts the socket's read side when the body has taken this long, and the request is
  answered 408. A 10 MB photo needs about 2.8 Mbit/s to arrive within it.

Each refusal shuts the read side, so gunicorn does not try to drain the rest, and the
connection closes after the answer. These bound how long one client holds a thread, not how
many clients may: more slow clients than threads still delay everyone else, up to these
bounds. That is why the service refuses to listen beyond loopback unless a proxy that
buffers bodies is in front (``server/boot.py``; nginx in ``deploy/``), where bodies arrive
whole and none of this is reached.
"""

from __future__ import annotations

import socket
import threading

from server.problems import ServiceError

STALLED_UPLOAD = "The upload stalled: nothing arrived for {timeout:g} s. Please try again on a steadier connection."
SLOW_UPLOAD = "The upload took longer than {timeout:g} s. Please try again on a faster connection."


def _refuse(sock: socket.socket, status: int, code: str, message: str) -> ServiceError:
    """Stop reading this client (gunicorn must not drain the rest) and name why."""
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    return ServiceError(status, code, message)


class StallGuardedInput:
    """``wsgi.input`` under both bounds above; a read past either raises the 408 ServiceError."""

    def __init__(self, raw, sock: socket.socket, read_timeout: float, body_timeout: float | None):
        self._raw, self._sock, self._read_timeout, self._body_timeout = raw, sock, read_timeout, body_timeout
        self._expired = threading.Event()
        self._timer = None
        if body_timeout:
            self._timer = threading.Timer(body_timeout, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        self._expired.set()
        try:
            self._sock.shutdown(socket.SHUT_RD)  # a recv waiting on a trickle returns at once
        except OSError:
            pass

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _guard(self, read, *args):
        if self._expired.is_set():
            raise self._too_slow()
        try:
            data = read(*args)
        except TimeoutError:
            raise _refuse(self._sock, 408, "request_timeout", STALLED_UPLOAD.format(timeout=self._read_timeout)) from None
        if self._expired.is_set():
            raise self._too_slow()
        return data

    def _too_slow(self) -> ServiceError:
        return _refuse(self._sock, 408, "request_timeout", SLOW_UPLOAD.format(timeout=self._body_timeout))

    def read(self, *args):
        return self._guard(self._raw.read, *args)

    def readline(self, *args):
        return self._guard(self._raw.readline, *args)

    def __iter__(self):
        return iter(self.readline, b"")


def guard_input(environ: dict, config) -> bool:
    """Bound this request's body reads under gunicorn (``gunicorn.socket``).

    Returns True when it did; ``release_socket`` must then lift the socket's timeout and the
    body timer before the response is written (Python bounds a whole ``sendall`` by the
    timeout, which would cut off a large report on a slow link).
    """
    sock = environ.get("gunicorn.socket")
    read_timeout = config.get("UPLOAD_READ_TIMEOUT")
    if not read_timeout or sock is None or isinstance(environ.get("wsgi.input"), StallGuardedInput):
        return False
    sock.settimeout(read_timeout)
    environ["wsgi.input"] = StallGuardedInput(environ["wsgi.input"], sock, read_timeout, config.get("UPLOAD_BODY_TIMEOUT"))
    return True


def release_socket(environ: dict) -> None:
    """The body has been read: the response may take its time."""
    guarded = environ.get("wsgi.input")
    if isinstance(guarded, StallGuardedInput):
        guarded.stop_timer()
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        try:
            sock.settimeout(None)
        except OSError:
            pass
