"""Fault test: SIGKILL one gunicorn worker under load; count what failed and time the recovery.

    python bench/fault_test.py                      # the shipped model
    python bench/fault_test.py --synthetic          # untrained MobileNetV2 224 (same inference cost)
    python bench/fault_test.py --model PATH.h5 --seconds 60 --kill-at 10 --clients 16

Starts gunicorn (shipped config, 2 workers) on a free loopback port, runs ``--clients``
keep-alive clients posting a JPEG to /predict, and ``--kill-at`` seconds in sends SIGKILL
to the worker that has answered the most requests so far. Prints every failed request
with when it was sent and ended relative to the kill, whether only requests in flight at
the kill failed (sent before the killed process had closed its sockets), the gap in
successful answers, when gunicorn forked the replacement, and when the replacement
answered its first request: a prober sends GET /readyz on fresh connections, each with
its own X-Request-ID, and the JSON access log names the pid that answered it. Exit
status 1 if any other request failed, or no replacement answered within --recovery-wait.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load_test import Load, Server, load_parser, model_for, requests_per_worker, summarise, upload_for, warm_up  # noqa: E402


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts: its sockets are closed by then)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


class Prober(threading.Thread):
    """GET /readyz on a fresh connection every 50 ms, each with its own X-Request-ID, so the
    access log (which names the worker pid) says when the replacement first answered."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.sent, self.stopping = url, {}, threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            rid = f"probe-{i}"
            self.sent[rid] = time.monotonic()
            try:
                requests.get(f"{self.url}/readyz", headers={"Connection": "close", "X-Request-ID": rid}, timeout=10)
            except requests.RequestException:
                pass
            i += 1
            time.sleep(0.05)


def first_probe_answered_by(log_path: Path, pid: int, sent: dict) -> float | None:
    """When the earliest probe that worker ``pid`` answered was sent (monotonic), if any."""
    times = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if str(entry.get("pid")).strip("<>") == str(pid) and entry.get("request_id") in sent:
                times.append(sent[entry["request_id"]])
    return min(times) if times else None


def main(argv=None) -> int:
    parser = load_parser(__doc__.split("\n\n")[0], "total load duration (at most 300)")
    parser.add_argument("--kill-at", type=float, default=10.0, help="seconds into the load to SIGKILL a worker")
    parser.add_argument("--recovery-wait", type=float, default=150.0,
                        help="seconds after the kill to wait for the replacement's first answer (at most 300)")
    args = parser.parse_args(argv)
    if not (1 <= args.seconds <= 300 and 0 < args.kill_at < args.seconds and args.recovery_wait <= 300):
        parser.error("need 1 <= --seconds <= 300, 0 < --kill-at < --seconds and --recovery-wait <= 300")

    with tempfile.TemporaryDirectory(prefix="fault-test-") as tmp:
        model_path = model_for(args, Path(tmp))
        body, body_name = upload_for(args.image)
        log_path = Path(tmp) / "gunicorn.log"
        server = Server(model_path, log_path)
        replaced_at = replacement = first_served = dead_at = load_stopped = None
        try:
            warm_up(server.url, body)
            before = server.workers()
            print(f"model: {model_path}{' (synthetic, untrained)' if args.synthetic else ''}")
            print(f"server: {server.url}, workers {before}; {args.clients} keep-alive clients posting {body_name} "
                  f"for {args.seconds:g} s; SIGKILL at +{args.kill_at:g} s")
            load = Load(server.url, body, args.clients)
            started = load.start()
            time.sleep(args.kill_at)
            served_before = requests_per_worker(log_path)
            # Kill the worker that has been answering the most: keep-alive clients may all sit on one.
            victim = max(before, key=lambda pid: served_before.get(f"<{pid}>", 0))
            prober = Prober(server.url)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            prober.start()
            while time.monotonic() - started < args.seconds:
                if dead_at is None and process_gone(victim):
                    dead_at = time.monotonic()
                if replacement is None:
                    new = sorted(set(server.workers()) - set(before))
                    if new:
                        replacement, replaced_at = new[0], time.monotonic()
                time.sleep(0.002 if dead_at is None else 0.05)
            load.stop()
            load_stopped = time.monotonic()
            # The replacement loads its model while the survivor serves the load; keep probing
            # (without load) until it answers, for at most --recovery-wait after the kill.
            while replacement is not None and time.monotonic() - killed_at < args.recovery_wait:
                first_served = first_probe_answered_by(log_path, replacement, prober.sent)
                if first_served:
                    break
                time.sleep(1.0)
            prober.stopping.set()
            prober.join(15)
            after = server.workers()
            time.sleep(1.0)  # access log flush
            if replacement is not None:
                first_served = first_probe_answered_by(log_path, replacement, prober.sent)
            log_tail = log_path.read_text(errors="replace")
        finally:
            server.stop()

    records = sorted(load.records)
    s = summarise(records, args.seconds)
    dead_at = dead_at or killed_at
    failed = [(start - killed_at, end - killed_at, outcome) for start, end, outcome in records if outcome != 200]
    # In flight = sent before the killed process had closed its sockets (it takes a few ms to
    # die): such a request may have gone to it. A failure sent later is a real failure.
    dying_ms = (dead_at - killed_at) * 1000
    in_flight = [f for f in failed if f[0] * 1000 < dying_ms and f[1] >= 0]
    unexpected = [f for f in failed if f not in in_flight]
    print(f"killed worker {victim} (it had answered {served_before.get(f'<{victim}>', 0)} of "
          f"{sum(served_before.values())} requests so far); its process was gone {dying_ms:.0f} ms after SIGKILL")
    print(f"requests: {s['requests']}, ok {s['ok']}, failed {len(failed)} (in flight at the kill: {len(in_flight)}, "
          f"other: {len(unexpected)}); {s['rps']:.2f} req/s overall; 5xx: {s['server_errors']}")
    for start, end, outcome in failed:
        print(f"  failed: sent {start * 1000:+.0f} ms, ended {end * 1000:+.0f} ms after the kill: {outcome}")
    in_flight_total = sum(1 for start, end, _ in records if (start - killed_at) * 1000 < dying_ms and end >= killed_at)
    print(f"requests in flight at the kill (both workers): {in_flight_total}; failed: {len(in_flight)}")
    ok_after = [end - killed_at for start, end, outcome in records if outcome == 200 and end >= killed_at]
    ok_before = [end - killed_at for start, end, outcome in records if outcome == 200 and end < killed_at]
    if ok_after:
        gap_start = max(ok_before) if ok_before else 0.0
        print(f"service: first successful answer {ok_after[0] * 1000:.0f} ms after the kill; longest gap in successful "
              f"answers around the kill {(ok_after[0] - gap_start) * 1000:.0f} ms")
    if replacement is not None:
        if first_served is None:
            ready = f"not within {args.recovery_wait:g} s"
        else:
            under = "under load" if first_served < load_stopped else f"after the load stopped at +{load_stopped - killed_at:.0f} s"
            ready = f"{(first_served - killed_at):.1f} s ({under})"
        print(f"recovery: gunicorn forked replacement worker {replacement} {(replaced_at - killed_at) * 1000:.0f} ms "
              f"after the kill; it answered its first request (model loaded) {ready} after the kill")
    else:
        print("recovery: gunicorn did NOT replace the worker within the run")
    print(f"workers before {before}, after {after}; /predict answered per worker before the kill: {served_before}")
    worker_lines = [line for line in log_tail.splitlines() if "SIGKILL" in line or "Booting worker" in line]
    for line in worker_lines[-3:]:
        print(f"  gunicorn: {line.strip()}")
    only_in_flight = not unexpected
    print(f"only in-flight requests failed: {'yes' if only_in_flight else 'NO'}; worker replaced: "
          f"{'yes' if replacement is not None and len(after) == len(before) else 'NO'}")
    return 0 if only_in_flight and replacement is not None and first_served is not None else 1


if __name__ == "__main__":
    sys.exit(main())
