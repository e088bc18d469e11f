"""Slow clients (#7, #38): every body read is bounded in time, and gunicorn takes clients
directly on loopback only.

In process, over a real socket pair: a body that stalls is answered 408 after
UPLOAD_READ_TIMEOUT; one that trickles (a byte every 0.2 s, never stalling that long) is
answered 408 after UPLOAD_BODY_TIMEOUT. Under a real gunicorn (2 workers x 4 threads):
stalled uploads are cut off; 16 trickling clients, twice the threads, delay /healthz only
until the body timeout frees the threads (before #38: every probe timed out for as long as
they trickled); and the master refuses to listen beyond loopback without a proxy.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from server import create_app
from server.boot import exposure_problem
from tests.conftest import image_bytes
from tests.corpus import RED
from tests.fixture_model import RED_CLASS
from tests.test_gunicorn import GUNICORN, free_port, server_env, wait_until_serving, worker_pids

ROOT = Path(__file__).resolve().parent.parent
READ_TIMEOUT = 3  # UPLOAD_READ_TIMEOUT for the module's server: keeps the slow-client tests short
BODY_TIMEOUT = 6  # UPLOAD_BODY_TIMEOUT for it


@pytest.fixture()
def socket_app(model_path):
    return create_app({"MODEL_PATH": str(model_path), "SECRET_KEY": "x", "TESTING": True, "UPLOAD_READ_TIMEOUT": 0.5})


def post_over_socket(app, sent: bytes, declared: int):
    """POST whose body comes from a real socket, as under gunicorn (``gunicorn.socket``)."""
    server_side, client_side = socket.socketpair()
    client_side.sendall(sent)
    try:
        started = time.monotonic()
        environ = {"wsgi.input": server_side.makefile("rb"), "CONTENT_LENGTH": str(declared), "gunicorn.socket": server_side}
        resp = app.test_client().post("/predict", content_type="image/png", environ_overrides=environ)
        return resp, time.monotonic() - started, server_side.gettimeout()
    finally:
        server_side.close()
        client_side.close()


def test_a_stalled_body_is_answered_408_after_the_read_timeout(socket_app):
    resp, elapsed, timeout_after = post_over_socket(socket_app, image_bytes(RED)[:40], declared=100_000)
    assert resp.status_code == 408 and resp.json["error"]["code"] == "request_timeout", resp.data[:200]
    assert "0.5 s" in resp.json["error"]["message"]
    assert 0.4 <= elapsed < 3.0
    assert timeout_after is None  # lifted before the response is written


def test_a_complete_body_over_a_socket_is_screened_and_the_socket_released(socket_app):
    body = image_bytes(RED)
    resp, elapsed, timeout_after = post_over_socket(socket_app, body, declared=len(body))
    assert resp.status_code == 200 and resp.json["prediction"]["code"] == RED_CLASS
    assert timeout_after is None  # a large report on a slow link must not be cut off by the read timeout


def test_a_trickling_body_is_answered_408_after_the_body_timeout(model_path):
    """A byte every 0.2 s never stalls for the 0.5 s read timeout; the whole body may take 1.5 s."""
    app = create_app({"MODEL_PATH": str(model_path), "SECRET_KEY": "x", "TESTING": True, "UPLOAD_READ_TIMEOUT": 0.5,
                      "UPLOAD_BODY_TIMEOUT": 1.5})
    server_side, client_side = socket.socketpair()
    stop = threading.Event()

    def trickle():  # for 6 s at most, then it hangs up: without the bound the test ends, and fails
        client_side.sendall(image_bytes(RED)[:40])
        until = time.monotonic() + 6
        while not stop.wait(0.2) and time.monotonic() < until:
            try:
                client_side.sendall(b"\x00")
            except OSError:
                return
        client_side.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        started = time.monotonic()
        environ = {"wsgi.input": server_side.makefile("rb"), "CONTENT_LENGTH": "100000", "gunicorn.socket": server_side}
        resp = app.test_client().post("/predict", content_type="image/png", environ_overrides=environ)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        sender.join(5)
        server_side.close()
        client_side.close()
    assert resp.status_code == 408 and resp.json["error"]["code"] == "request_timeout", resp.data[:200]
    assert "longer than 1.5 s" in resp.json["error"]["message"]
    assert 1.4 <= elapsed < 3.0, elapsed


@pytest.mark.parametrize("binds, hops, refused", [
    (["127.0.0.1:8000"], 0, False),
    (["localhost:8000"], 0, False),
    (["[::1]:8000"], 0, False),
    (["unix:/run/screening.sock"], 0, False),
    (["0.0.0.0:8000"], 0, True),
    (["10.0.0.11:8000"], 0, True),
    (["127.0.0.1:8000", "[::]:8000"], 0, True),
    (["0.0.0.0:8000"], 1, False),  # a buffering proxy in front, declared
])
def test_only_loopback_takes_clients_without_a_proxy(binds, hops, refused):
    problem = exposure_problem(binds, hops)
    assert (problem is not None) == refused
    if refused:
        assert problem.startswith("refusing to listen on") and "TRUSTED_PROXY_HOPS=1" in problem


# ---------------------------------------------------------------- a real gunicorn


@pytest.fixture(scope="module")
def live(model_path, tmp_path_factory):
    """gunicorn with the shipped config (2 workers x 4 threads) and short upload bounds; stopped in teardown."""
    log_path = tmp_path_factory.mktemp("slow-clients") / "server.log"
    port = free_port()
    env = server_env(MODEL_PATH=str(model_path), SECRET_KEY="slow-secret", PORT=str(port),
                     UPLOAD_READ_TIMEOUT=str(READ_TIMEOUT), UPLOAD_BODY_TIMEOUT=str(BODY_TIMEOUT))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(GUNICORN, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(proc, base, log_path)
        time.sleep(2)  # both workers have loaded their model
        yield {"base": base, "port": port, "proc": proc, "workers": worker_pids(proc.pid), "log": log_path}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def stalled_upload(port: int, sent: int = 2000, declared: int = 500_000) -> socket.socket:
    """Headers and the first ``sent`` bytes of a ``declared``-byte PNG body, then silence."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    sock.sendall(head + image_bytes(RED)[:64] + b"\x00" * (sent - 64))
    return sock


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    started, data = time.monotonic(), b""
    sock.settimeout(limit_s)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data, time.monotonic() - started


def stall_and_serve(live, stalled_count: int, normal_requests: int = 6, closed_within: float = READ_TIMEOUT + 3):
    """Open ``stalled_count`` stalled uploads, time ``normal_requests`` ordinary predictions
    meanwhile; each stalled one must get a 408 and be closed within ``closed_within`` s."""
    stalled = [stalled_upload(live["port"]) for _ in range(stalled_count)]
    results: list = [None] * stalled_count

    def watch(i, sock):
        results[i] = read_until_closed(sock, READ_TIMEOUT + 15)

    watchers = [threading.Thread(target=watch, args=(i, s)) for i, s in enumerate(stalled)]
    for t in watchers:
        t.start()
    served = []
    try:
        time.sleep(0.5)
        for _ in range(normal_requests):
            started = time.monotonic()
            resp = requests.post(f"{live['base']}/predict", data=image_bytes(RED), headers={"Content-Type": "image/png"},
                                 timeout=READ_TIMEOUT + 20)
            served.append(round(time.monotonic() - started, 2))
            assert resp.status_code == 200 and resp.json()["prediction"]["code"] == RED_CLASS
    finally:
        for t in watchers:
            t.join(READ_TIMEOUT + 20)
        for s in stalled:
            s.close()
    for data, closed_after in results:
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert b'"code":"request_timeout"' in data.replace(b" ", b"")
        assert READ_TIMEOUT - 1 <= closed_after <= closed_within, closed_after
    assert worker_pids(live["proc"].pid) == live["workers"], "a worker died"
    return served


@pytest.mark.slow
def test_stalled_uploads_do_not_block_others_and_are_cut_off(live):
    """Slowloris: 3 uploads stall mid-body. With 4 threads per worker none can fill a
    worker, so others are served at once; each stalled upload is answered 408 and
    disconnected after UPLOAD_READ_TIMEOUT of silence, and no worker dies."""
    served = stall_and_serve(live, stalled_count=3)
    assert max(served) < 2.0, served


@pytest.mark.slow
def test_a_thread_per_stalled_upload_delays_others_only_until_the_read_timeout(live):
    """As many stalled uploads as the server has threads (2 workers x 4): others may wait,
    but no longer than UPLOAD_READ_TIMEOUT (without it they waited forever). An upload
    queued behind busy threads is read, and its silence timed, once a thread frees up."""
    served = stall_and_serve(live, stalled_count=8, normal_requests=3, closed_within=2 * READ_TIMEOUT + 3)
    assert max(served) < READ_TIMEOUT + 3, served


TRICKLERS = 16  # twice the threads of 2 workers x 4
TRICKLE_FOR = 40.0  # seconds each trickler would go on sending, if not cut off


def trickling_uploads(port: int, count: int, every: float, stop: threading.Event) -> tuple[list, list]:
    """``count`` uploads that send a byte every ``every`` s (under the read timeout) until cut off,
    ``stop`` or TRICKLE_FOR; each entry ends as (answer bytes, seconds until the server closed)."""
    results: list = [None] * count

    def one(i):
        sock = socket.create_connection(("127.0.0.1", port), timeout=TRICKLE_FOR + 10)
        started = time.monotonic()
        head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
                f"Content-Length: 500000\r\n\r\n").encode()
        data = b""
        try:
            sock.sendall(head + image_bytes(RED)[:64])
            sock.settimeout(every)
            while time.monotonic() - started < TRICKLE_FOR and not stop.is_set():
                try:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break  # closed by the server
                    data += chunk
                except socket.timeout:
                    sock.sendall(b"\x00")
        except OSError:
            pass
        finally:
            results[i] = (data, time.monotonic() - started)
            sock.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    return threads, results


@pytest.mark.slow
def test_trickling_clients_hold_threads_only_until_the_body_timeout(live):
    """16 clients send a body at one byte a second (the issue's attack, faster, under the read timeout).
    Each is answered 408 once its body has taken UPLOAD_BODY_TIMEOUT on a thread. A worker queues the
    connections it accepted beyond its 4 threads, so the last are cut after up to 4 rounds; then
    /healthz answers at once, while the clients would still be trickling. No worker dies. (Before
    #38 nothing cut them: the probes waited for as long as they trickled.)"""
    stop = threading.Event()
    started = time.monotonic()
    threads, results = trickling_uploads(live["port"], TRICKLERS, every=1.0, stop=stop)
    probes = []
    try:
        time.sleep(1.0)
        while any(t.is_alive() for t in threads) and time.monotonic() - started < TRICKLE_FOR + 5:
            sent = time.monotonic()
            try:
                status = requests.get(f"{live['base']}/healthz", timeout=5).status_code
            except requests.RequestException:
                status = None
            probes.append((round(sent - started, 1), round(time.monotonic() - sent, 2), status))
            time.sleep(0.5)
        all_cut = time.monotonic() - started
        after = requests.get(f"{live['base']}/healthz", timeout=5)
        after_s = time.monotonic() - started - all_cut
    finally:
        stop.set()
        for t in threads:
            t.join(TRICKLE_FOR + 15)
    print(f"\n{TRICKLERS} tricklers, UPLOAD_BODY_TIMEOUT={BODY_TIMEOUT} s; closed after (s):",
          sorted(round(closed, 1) for _, closed in results))
    print("/healthz probes meanwhile (sent at s, waited s, status; None: no answer within 5 s):", probes)
    print(f"all cut off after {all_cut:.1f} s; /healthz then answered in {after_s:.2f} s")
    for data, closed_after in results:
        assert data.startswith(b"HTTP/1.1 408") and b"longer than 6 s" in data, data[:300]
        assert closed_after <= 4 * BODY_TIMEOUT + 3, closed_after  # 4 rounds of a worker's 4 threads at most
    assert all_cut < TRICKLE_FOR - 5 and after.status_code == 200 and after_s < 1.0
    assert worker_pids(live["proc"].pid) == live["workers"], "a worker died"


@pytest.mark.slow
def test_gunicorn_refuses_to_listen_beyond_loopback_without_a_proxy(model_path):
    env = server_env(MODEL_PATH=str(model_path), SECRET_KEY="x", HOST="0.0.0.0", PORT=str(free_port()),
                     TRUSTED_PROXY_HOPS="0")
    served = subprocess.run(GUNICORN, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert served.returncode == 3
    errors = [line for line in served.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: refusing to listen on 0.0.0.0:"), served.stderr
    assert "Booting worker" not in served.stderr
