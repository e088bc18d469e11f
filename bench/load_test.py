"""Load test: 16 clients against gunicorn for 60 s on loopback; latency, errors, worker RSS.

    python bench/load_test.py                        # the shipped model (saved_models/ham10000_mobilenetv2.h5)
    python bench/load_test.py --model PATH.h5        # another exported model
    python bench/load_test.py --synthetic            # untrained MobileNetV2 224: same inference cost
    python bench/load_test.py --seconds 20 --clients 8

Starts gunicorn with the shipped gunicorn.conf.py on a free 127.0.0.1 port, warms each
worker up, then runs ``--clients`` threads (each its own keep-alive session) posting a
600x450 JPEG to /predict until ``--seconds`` have passed. Prints req/s, p50/p95/p99, the
error and 5xx counts, each worker's RSS (from /proc) at the start and the end, and
whether RSS stayed flat within 10%. Exit status 1 when a target (0 5xx, RSS flat, no
worker restarted) is missed. Clients and server share this machine's CPUs.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import requests  # noqa: E402

from bench_predict import free_port, synthetic_model, upload_for  # noqa: E402
from deploy.processes import worker_pids  # noqa: E402
from server.config import DEFAULT_MODEL_PATH  # noqa: E402

GUNICORN = [str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py", "wsgi:app"]


# ---------------------------------------------------------------- the server and its workers


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class Server:
    """gunicorn on a free loopback port with the shipped config; its logs go to a file."""

    def __init__(self, model_path: Path, log_path: Path, workers: int = 2, boot_seconds: float = 180,
                 deployed_limits: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {**os.environ, "MODEL_PATH": str(model_path), "SECRET_KEY": os.environ.get("SECRET_KEY", "load-test"),
               "HOST": "127.0.0.1", "PORT": str(self.port), "WEB_CONCURRENCY": str(workers)}
        if deployed_limits:
            # As behind deploy/'s nginx: the default per-address limits, each client's address from X-Forwarded-For.
            env.update(RATE_LIMIT="", REPORT_RATE_LIMIT="", TRUSTED_PROXY_HOPS="1")
        else:
            env.update(RATE_LIMIT="off", REPORT_RATE_LIMIT="off")  # the load comes from one address: measure, not limit
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(GUNICORN, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + boot_seconds
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn exited:\n{log_path.read_text(errors='replace')[-2000:]}")
            if len(self.workers()) == workers and self._ready():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("gunicorn did not become ready in time")
            time.sleep(0.5)

    def _ready(self) -> bool:
        try:
            return all(requests.get(f"{self.url}/readyz", timeout=5).status_code == 200 for _ in range(4))
        except requests.RequestException:
            return False

    def workers(self) -> list[int]:
        return sorted(worker_pids(self.proc.pid))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def model_for(args, tmp: Path) -> Path:
    if args.synthetic:
        return synthetic_model(tmp)
    path = args.model or Path(os.environ.get("MODEL_PATH") or DEFAULT_MODEL_PATH)
    if not path.is_file():
        raise SystemExit(f"no model at {path}: train one, pass --model PATH, or use --synthetic")
    return path


# ---------------------------------------------------------------- the load


class SourceAddress(requests.adapters.HTTPAdapter):
    """Connections from one loopback address (any of 127.0.0.0/8): a client as a proxy in front sees it."""

    def __init__(self, address: str):
        self._source = (address, 0)
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, source_address=self._source, **kwargs)


class Load:
    """``clients`` threads posting ``body`` to /predict until ``stop()``; every request recorded."""

    def __init__(self, url: str, body: bytes, clients: int, first_address: str | None = None,
                 new_address_each_request: bool = False, connect_from_address: bool = False, verify: str | bool = True):
        """``first_address``: each client posts as its own address from there on, so per-address rate
        limits see ``clients`` people; with ``new_address_each_request``, every request is another
        person's. The address is sent as X-Forwarded-For (as a proxy sets it; the server must trust it),
        or with ``connect_from_address`` it is the connection's own (a loopback address, for nginx)."""
        self.url, self.body, self.verify, self._bind = url, body, verify, connect_from_address
        self._base = ipaddress.ip_address(first_address) if first_address else None
        self._step = clients if new_address_each_request else 0
        self._next_client = 0
        self.records: list[tuple[float, float, int | str]] = []  # (start, end, status or exception name)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _session(self, address: str | None) -> requests.Session:
        session = requests.Session()
        if self._bind and address:
            session.mount(self.url.split("//")[0] + "//", SourceAddress(address))
        return session

    def _client(self) -> None:
        with self._lock:
            client, self._next_client = self._next_client, self._next_client + 1
        sent, session, session_address = 0, None, None
        while not self._stop.is_set():
            started = time.monotonic()
            address = None if self._base is None else str(self._base + client + sent * self._step)
            sent += 1
            if session is None or (self._bind and address != session_address):
                if session is not None:
                    session.close()
                session, session_address = self._session(address), address
            try:
                resp = session.post(f"{self.url}/predict", files={"image": ("lesion.jpg", self.body, "image/jpeg")},
                                    headers={"X-Forwarded-For": address} if address and not self._bind else {},
                                    verify=self.verify, timeout=60)  # per request: REQUESTS_CA_BUNDLE beats a session's
                outcome: int | str = resp.status_code
            except requests.RequestException as exc:
                outcome = type(exc).__name__
                session = None  # drop a connection the server closed
            with self._lock:
                self.records.append((started, time.monotonic(), outcome))

    def start(self) -> float:
        self.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self.started

    def stop(self) -> float:
        self._stop.set()
        for t in self._threads:
            t.join(70)
        self.stopped = time.monotonic()
        return self.stopped


def summarise(records, wall_s: float) -> dict:
    ok = [(end - start) * 1000.0 for start, end, outcome in records if outcome == 200]
    outcomes = Counter(outcome for _, _, outcome in records)
    errors = sum(n for outcome, n in outcomes.items() if outcome != 200)
    server_errors = sum(n for outcome, n in outcomes.items() if isinstance(outcome, int) and outcome >= 500)
    pct = (lambda q: float(np.percentile(ok, q))) if ok else (lambda q: float("nan"))
    return {"requests": len(records), "ok": len(ok), "rps": len(ok) / wall_s, "p50": pct(50), "p95": pct(95),
            "p99": pct(99), "errors": errors, "server_errors": server_errors, "outcomes": dict(outcomes)}


def requests_per_worker(log_path: Path) -> dict[str, int]:
    """POST /predict lines per worker pid in the JSON access log."""
    counts: Counter = Counter()
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"path": "/predict"' in line:
            counts[line.rsplit('"pid": "', 1)[-1].split('"', 1)[0]] += 1
    return dict(counts)


def warm_up(url: str, body: bytes, n: int = 8) -> None:
    for _ in range(n):
        requests.post(f"{url}/predict", files={"image": ("w.jpg", body, "image/jpeg")}, timeout=60).raise_for_status()


def load_parser(description: str, seconds_help: str) -> argparse.ArgumentParser:
    """The options every load-driving bench script shares: which model, how long, how many
    clients, which image. Scripts add their own on top."""
    parser = argparse.ArgumentParser(description=description)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", type=Path, help="exported .h5 (default: MODEL_PATH or the shipped model)")
    which.add_argument("--synthetic", action="store_true", help="untrained MobileNetV2 224 (same inference cost)")
    parser.add_argument("--seconds", type=float, default=60.0, help=seconds_help)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--image", type=Path, help="the JPEG to post (default: a HAM10000 photo from ../shared)")
    return parser


def main(argv=None) -> int:
    parser = load_parser(__doc__.split("\n\n")[0], "load duration (bounded: at most 600)")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 600:
        parser.error("--seconds must be between 1 and 600")

    with tempfile.TemporaryDirectory(prefix="load-test-") as tmp:
        model_path = model_for(args, Path(tmp))
        body, body_name = upload_for(args.image)
        server = Server(model_path, Path(tmp) / "gunicorn.log")
        try:
            warm_up(server.url, body)
            workers = server.workers()
            rss_start = {pid: rss_mb(pid) for pid in workers}
            print(f"model: {model_path}{' (synthetic, untrained)' if args.synthetic else ''}")
            print(f"server: gunicorn {server.url}, workers {workers}; upload {body_name} ({len(body)} bytes); "
                  f"{args.clients} clients for {args.seconds:g} s")
            load = Load(server.url, body, args.clients)
            peak = dict(rss_start)
            started = load.start()
            while time.monotonic() - started < args.seconds:
                time.sleep(1.0)
                for pid in workers:
                    peak[pid] = max(peak[pid] or 0.0, rss_mb(pid) or 0.0)
            load.stop()
            rss_end = {pid: rss_mb(pid) for pid in workers}
            workers_after = server.workers()
            time.sleep(1.0)  # access log flush
            per_worker = requests_per_worker(server.log_path)
        finally:
            server.stop()
    s = summarise(load.records, args.seconds)
    print(f"requests: {s['requests']} ({s['ok']} ok) -> {s['rps']:.2f} req/s")
    print(f"latency ms: p50 {s['p50']:.1f}  p95 {s['p95']:.1f}  p99 {s['p99']:.1f}")
    print(f"errors: {s['errors']} (5xx: {s['server_errors']}); outcomes {s['outcomes']}")
    print(f"/predict answered per worker pid (access log, warm-up included): {per_worker}")
    flat = True
    for pid in workers:
        start, end = rss_start[pid], rss_end[pid]
        if start is None or end is None:
            print(f"worker {pid}: RSS start {start} MB, end: gone")
            flat = False
            continue
        change = (end - start) / start
        flat &= abs(change) <= 0.10
        print(f"worker {pid}: RSS start {start:.1f} MB, end {end:.1f} MB ({change:+.1%}), peak {peak[pid]:.1f} MB")
    print(f"RSS flat within 10%: {'yes' if flat else 'NO'}")
    restarted = workers_after != workers
    print(f"workers restarted during the run: {'YES ' + str(workers_after) if restarted else 'no'}")
    met = s["server_errors"] == 0 and flat and not restarted
    print(f"targets (0 5xx, RSS flat within 10%, no restart): {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
