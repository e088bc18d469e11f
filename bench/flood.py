"""A flood of the worst small file: do other users' photos still get answered in time, and in how much memory?

    python bench/flood.py                          # the shipped model, 16 flood clients for 10 s
    python bench/flood.py --seconds 10 --clients 16

Builds small files that cost the most to screen per byte (a JPEG or PNG whose header claims far
more pixels than its bytes hold, a progressive JPEG, a flat canvas), times each one through
``open_upload`` in process, and floods the costliest of those under 100 KB (and the header bomb
of issue #37) at
gunicorn (shipped config) from ``--clients`` keep-alive clients for ``--seconds``, while one
client posts a 600x450 lesion photo in a loop. Prints the normal photo's p50/p95 alone and under
each flood, their ratio, the flood's rate and answers, and each worker's RSS (sampled every
0.1 s: the largest, and after). The normal client posts from a process of its own; clients and
server share this machine's CPUs.

``--limits deployed`` (the default) runs gunicorn with the default per-address limits, as
behind nginx: each flood client its own address and each normal photo another person's
(``X-Forwarded-For``, ``TRUSTED_PROXY_HOPS=1``). ``--limits nginx`` runs the deployed stack itself
(``deploy/stack.py``: nginx over HTTPS, whose flood guard refuses what passes twice the limit, in
front of one gunicorn host of 2 workers), each client connecting from its own loopback address.
``--limits off`` turns the limits off: the raw cost of the flood's requests beside the normal one.
"""

from __future__ import annotations

import io
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench_predict import upload_for  # noqa: E402
from deploy.processes import worker_pids  # noqa: E402
from load_test import Load, Server, load_parser, model_for, rss_mb, summarise, warm_up  # noqa: E402


SMALL_BYTES = 100_000  # "small": a tenth of a phone photo's bytes, three times a 600x450 JPEG's


def with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its frame header (SOF0/SOF2) claiming ``width`` x ``height``: a small file, a huge canvas."""
    data = bytearray(jpeg)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            data[at + 5:at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
            return bytes(data)
    raise ValueError("no baseline or progressive frame header")


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def worst_small_files(photo: bytes) -> dict[str, bytes]:
    """The candidates, by name: each as small as it gets for what it asks the decoder to do."""
    flat = Image.new("RGB", (1000, 1000), (200, 150, 130))
    return {
        "JPEG header claiming 6000x6000": with_jpeg_size(photo, 6000, 6000),
        "16-bit grey PNG 6300x6300": encoded(Image.fromarray(np.full((6300, 6300), 30000, np.uint16)), "PNG"),
        "progressive flat JPEG 4000x3000": encoded(Image.new("RGB", (4000, 3000), (200, 150, 130)), "JPEG",
                                                   progressive=True),
        "progressive flat JPEG 700x700": encoded(flat.resize((700, 700)), "JPEG", progressive=True),
        "flat RGBA PNG 700x700": encoded(flat.resize((700, 700)).convert("RGBA"), "PNG", compress_level=9),
        "flat RGBA PNG 1000x1000": encoded(flat.convert("RGBA"), "PNG", compress_level=9),
        "baseline flat JPEG 8000x6000": encoded(Image.new("RGB", (8000, 6000), (200, 150, 130)), "JPEG"),
    }


def decode_cost_ms(data: bytes, n: int = 5) -> tuple[float, str]:
    """Median ``open_upload`` time in process, and what it answered (ok, or the refusal's code)."""
    from server.decoding import open_upload
    from server.problems import ImageRejected

    times, outcome = [], "ok"
    for _ in range(n):
        started = time.perf_counter()
        try:
            open_upload(data)
        except ImageRejected as exc:
            outcome = f"{exc.status} {exc.code}"
        times.append((time.perf_counter() - started) * 1000.0)
    return float(np.median(times)), outcome


class RssSampler:
    """The largest RSS each worker reached while running, sampled every ``every`` seconds."""

    def __init__(self, server: Server, every: float = 0.1):
        self.server, self.every, self.peak = server, every, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for pid in self.server.workers():
                self.peak[pid] = max(self.peak.get(pid, 0.0), rss_mb(pid) or 0.0)
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


LIMITS = {
    "deployed": "the default per-address limits in gunicorn, each client's address in X-Forwarded-For",
    "nginx": "the deployed stack: nginx (HTTPS, its flood guard) in front, each client its own loopback address",
    "off": "none: the raw cost of the flood's requests",
}


def client_options(limits: str, server, run: int) -> tuple[dict, dict]:
    """How the flood clients and the normal client of ``run`` connect (``Load``'s options) under ``--limits``.

    Every flood client is one address and every normal photo another person's: as X-Forwarded-For
    straight to gunicorn (deployed), or as the connection's own loopback address through nginx.
    Each run's addresses are new, so each flood meets full budgets, as a new attacker would."""
    if limits == "off":
        return {}, {"new_address_each_request": True}
    if limits == "deployed":
        return ({"first_address": f"10.1.{run}.1"},
                {"first_address": f"10.{2 + run}.0.1", "new_address_each_request": True})
    bound = {"connect_from_address": True, "verify": server.verify}
    return ({"first_address": f"127.1.{run}.1", **bound},
            {"first_address": f"127.{2 + run}.0.1", "new_address_each_request": True, **bound})


class BehindNginx:
    """The stack as deployed (deploy/stack.py): nginx over HTTPS with its flood guard, one gunicorn host
    of 2 workers with the default limits, Redis."""

    def __init__(self, model_path: Path, run_dir: Path):
        from deploy.stack import Stack

        self.stack = Stack(run_dir, instances=1, model_path=str(model_path),
                           env={"WEB_CONCURRENCY": "2", "RATE_LIMIT": "", "REPORT_RATE_LIMIT": ""}).start()
        self.url, self.verify = self.stack.url, self.stack.certificate.chain
        self.warm_url = self.stack.gunicorns()[0].url

    def workers(self) -> list[int]:
        return sorted(worker_pids(self.stack.gunicorns()[0].pid))

    def stop(self) -> None:
        self.stack.stop()


def _normal_client(url: str, body: bytes, options: dict, conn) -> None:
    """The normal user, in a process of its own: waits for a duration, posts for that long, sends back the records."""
    seconds = conn.recv()
    one = Load(url, body, 1, **options)
    started = one.start()
    time.sleep(seconds)
    conn.send((one.records, one.stop() - started))


class NormalClient:
    """One client posting the normal photo from its own process.

    In the flood's process its thread would wait for the GIL behind 16 flooding threads, and its
    latency would measure the load generator rather than the service."""

    def __init__(self, url: str, body: bytes, options: dict):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._proc = context.Process(target=_normal_client, args=(url, body, options, child), daemon=True)

    def __enter__(self):
        self._proc.start()
        return self

    def run(self, seconds: float) -> tuple[list, float]:
        """Post for ``seconds``: the records (start, end, outcome) and the wall time."""
        self._conn.send(seconds)
        return self._conn.recv()

    def __exit__(self, *exc):
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


def timed_run(server, normal: bytes, seconds: float, flood: bytes | None, clients: int, limits: str, run: int) -> dict:
    """One normal client for ``seconds``, alone or beside ``clients`` flooding ``flood``, connected as
    ``client_options`` says for ``limits`` and ``run``."""
    flooding, normally = client_options(limits, server, run)
    flooders = Load(server.url, flood, clients, **flooding) if flood is not None else None
    with RssSampler(server) as rss, NormalClient(server.url, normal, normally) as one:
        if flooders:
            flooders.start()
            time.sleep(0.5)  # the flood is on before the normal client starts
        records, wall = one.run(seconds)
        if flooders:
            flooders.stop()
    result = {"normal": summarise(records, wall), "rss_peak": dict(rss.peak)}
    if flooders:
        result["flood"] = summarise(flooders.records, flooders.stopped - flooders.started)
    result["rss_after"] = {pid: rss_mb(pid) for pid in server.workers()}
    return result


def main(argv=None) -> int:
    parser = load_parser(__doc__.split("\n\n")[0], "seconds of each run")
    parser.set_defaults(seconds=10.0)
    parser.add_argument("--limits", choices=LIMITS, default="deployed",
                        help="; ".join(f"{name}: {what}" for name, what in LIMITS.items()))
    args = parser.parse_args(argv)
    normal, what = upload_for(args.image, (600, 450))
    files = worst_small_files(normal)
    print(f"normal upload: {what}, {len(normal)} bytes")
    print("| small file | bytes | open_upload, in process (median ms) | answer |")
    print("|---|---:|---:|---|")
    costs = {}
    for name, data in files.items():
        costs[name], outcome = decode_cost_ms(data)
        print(f"| {name} | {len(data):,} | {costs[name]:.1f} | {outcome} |")
    worst = max((name for name in files if len(files[name]) <= SMALL_BYTES), key=costs.get)
    floods = dict.fromkeys(("JPEG header claiming 6000x6000", worst))
    with tempfile.TemporaryDirectory(prefix="flood-") as tmp:
        model = model_for(args, Path(tmp))
        if args.limits == "nginx":
            server = BehindNginx(model, Path(tmp) / "stack")
        else:
            server = Server(model, Path(tmp) / "gunicorn.log", deployed_limits=args.limits == "deployed")
        print(f"rate limits: {LIMITS[args.limits]}")
        try:
            warm_up(getattr(server, "warm_url", server.url), normal)
            alone = timed_run(server, normal, args.seconds, None, 0, args.limits, 0)
            base = alone["normal"]
            print(f"\nnormal photo alone, {args.seconds:.0f} s: p50 {base['p50']:.1f} ms, p95 {base['p95']:.1f} ms, "
                  f"{base['rps']:.1f} req/s; worker RSS peak "
                  f"{', '.join(f'{v:.0f}' for v in alone['rss_peak'].values())} MB")
            for run, name in enumerate(floods, start=1):
                got = timed_run(server, normal, args.seconds, files[name], args.clients, args.limits, run)
                n, f = got["normal"], got["flood"]
                print(f"flood of '{name}' ({args.clients} clients, {args.seconds:.0f} s): {f['requests'] / args.seconds:.1f} req/s, "
                      f"answers {f['outcomes']}")
                print(f"  normal photo beside it: p50 {n['p50']:.1f} ms, p95 {n['p95']:.1f} ms "
                      f"({n['p95'] / base['p95']:.2f}x alone; bar <= 3x), {n['ok']} answered")
                print(f"  worker RSS peak {', '.join(f'{v:.0f}' for v in got['rss_peak'].values())} MB (bar <= 1024), "
                      f"after {', '.join(f'{v or 0:.0f}' for v in got['rss_after'].values())} MB")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
