"""Clients of the loopback stack (deploy/stack.py) for the scale-out tests: each request from the
client address a test chooses (any of 127/8), over HTTPS with nginx's certificate checked, found
again in nginx's access log by its request id."""

from __future__ import annotations

import http.client
import itertools
import json
import ssl
import threading
import time
import uuid

import requests

from deploy.stack import Stack


def loopback_addresses():
    """Distinct client addresses (all of 127/8 is loopback on Linux): one per request where a test wants no limit."""
    for a, b in itertools.product(range(1, 255), range(1, 255)):
        yield f"127.1.{a}.{b}"


def https(stack: Stack, source: str = "127.0.0.1", timeout: float = 30) -> http.client.HTTPSConnection:
    """A connection to nginx's HTTPS side from ``source``, checking its certificate (#38)."""
    return http.client.HTTPSConnection("127.0.0.1", stack.tls_port, timeout=timeout, source_address=(source, 0),
                                       context=ssl.create_default_context(cafile=stack.certificate.chain))


def post(stack: Stack, body: bytes, source: str = "127.0.0.1", headers: dict | None = None, path: str = "/predict",
         timeout: float = 30):
    """POST from ``source`` over a fresh connection; (status or None when the connection failed, body, request id)."""
    request_id = uuid.uuid4().hex
    conn = https(stack, source, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "image/png", "X-Request-ID": request_id,
                                                       **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read(), request_id
    except OSError:
        return None, b"", request_id
    finally:
        conn.close()


def direct(host, body: bytes, forwarded_for: str) -> int:
    """POST straight to one host as nginx forwards a client's request (the host trusts one proxy hop)."""
    return requests.post(host.url + "/predict", files={"image": ("lesion.png", body, "image/png")},
                         headers={"X-Forwarded-For": forwarded_for}, timeout=30).status_code


def flood_at_once(stack: Stack, body: bytes, source: str, n: int, wait: float = 3.0):
    """``n`` POSTs from ``source`` all at once; (status, body, request id), status None where no answer
    came in ``wait`` seconds (nginx still holds it). Closing those connections ends them in nginx."""
    results, lock = [], threading.Lock()

    def one():
        got = post(stack, body, source, timeout=wait)
        with lock:
            results.append(got)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def nginx_log(stack: Stack, records) -> dict[str, dict]:
    """nginx's access log by request id, once it holds every request in ``records`` (nginx logs a
    request just after its client has the answer, so the last few may lag a moment)."""
    wanted = {r[-1] for r in records}
    deadline = time.monotonic() + 10
    while True:
        lines = (stack.run_dir / "nginx-access.log").read_text().splitlines()
        entries = {e["request_id"]: e for e in map(json.loads, lines) if e["request_id"]}
        if wanted <= entries.keys() or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)
