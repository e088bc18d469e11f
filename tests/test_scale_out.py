"""Several hosts behind nginx, sharing one Redis for the rate limit (#17).

The fast tests check the pieces: shared rate-limit storage and its fallback, the client's
address taken from the proxy, and ``make services`` (nginx's config: ``tests/test_nginx_config.py``).

The slow test starts the real stack with ``deploy/stack.py`` (Debian's nginx and
redis-server, two gunicorn instances on their own loopback ports standing for two hosts,
each serving the shipped model) and shows, with ``-s`` printing the figures: requests spread
over every instance; the rate limit holds in total across instances; nginx paces each address
at that rate, refusing only past a whole budget waiting; a report token made on
one instance downloads from the other; killing one instance loses only its in-flight requests
while nginx routes around it; the stack stops cleanly. It skips where nginx or redis-server is
not installed (``make services`` installs them).
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
import requests

from deploy.nginx import MAX_IN_PROGRESS, PACED_AFTER
from deploy.stack import Stack, alive, find_binary
from tests.conftest import image_bytes
from tests.stack_client import direct, flood_at_once, https, loopback_addresses, nginx_log, post
from tests.test_setup import MAKE, error_line, run_make

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = ROOT / "saved_models" / "ham10000_mobilenetv2.h5"
LIMIT = 10  # per client per hour in the e2e test: the window cannot roll over during the test
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
REPORT_RE = re.compile(r'name="token" value="([^"]+)"')


# ---------------------------------------------------------------- the pieces, fast

def test_shared_storage_uri_is_checked_at_boot_and_memory_stays_the_default(monkeypatch):
    from server.boot import boot_problem
    from server.config import config_from_env
    from server.web.scaleout import limiter_options, storage_problem

    monkeypatch.delenv("RATE_LIMIT_STORAGE_URI", raising=False)
    assert config_from_env()["RATE_LIMIT_STORAGE_URI"] == "memory://"
    assert limiter_options({"RATE_LIMIT_STORAGE_URI": "memory://"})["in_memory_fallback_enabled"] is False
    assert storage_problem("") is None and storage_problem("redis://10.0.0.5:6379/0") is None  # no connection made
    problem = boot_problem({"SECRET_KEY": "x", "RATE_LIMIT": "5/minute", "RATE_LIMIT_STORAGE_URI": "redis//typo"})
    assert problem.startswith("RATE_LIMIT_STORAGE_URI='redis//typo' cannot be used")


def screen_json(client, address=None):
    headers = {"X-Forwarded-For": address} if address else {}
    return client.post("/predict", data=image_bytes((220, 30, 30)), content_type="image/png", headers=headers)


def test_behind_one_proxy_each_forwarded_client_has_its_own_budget(model_path):
    from server import create_app

    def app(hops):
        return create_app({"MODEL_PATH": str(model_path), "SECRET_KEY": "x", "TESTING": True, "RATE_LIMIT": "1/hour",
                           "TRUSTED_PROXY_HOPS": hops}).test_client()

    behind = app(1)
    assert [screen_json(behind, ip).status_code for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.1")] == [200, 200, 429]
    direct = app(0)  # not behind a proxy: the header is anyone's to write, so it is ignored
    assert [screen_json(direct, ip).status_code for ip in ("10.0.0.1", "10.0.0.2")] == [200, 429]


def test_an_unreachable_redis_falls_back_to_memory_instead_of_failing_screening(model_path):
    from server import create_app

    app = create_app({"MODEL_PATH": str(model_path), "SECRET_KEY": "x", "TESTING": True, "RATE_LIMIT": "2/hour",
                      "RATE_LIMIT_STORAGE_URI": "redis://127.0.0.1:1/0"}).test_client()  # nothing listens on port 1
    assert [screen_json(app).status_code for _ in range(3)] == [200, 200, 429]  # counted in this worker's memory


SERVICES = "install -y -qq nginx redis-server DEBIAN_FRONTEND=noninteractive"
NO_SERVICES = {"NGINX": "/nonexistent/nginx", "REDIS_SERVER": "/nonexistent/redis-server"}


@pytest.mark.skipif(MAKE is None, reason="make is not installed")
def test_make_services_installs_nginx_and_redis_when_either_is_missing(tmp_path):
    result, calls = run_make(tmp_path, "services", uid=0, NGINX="/bin/sh", REDIS_SERVER="/nonexistent/redis-server")
    assert result.returncode == 0, result.stderr
    assert calls == ["apt-get update -qq DEBIAN_FRONTEND=noninteractive", f"apt-get {SERVICES}"]
    (tmp_path / "again").mkdir()
    result, calls = run_make(tmp_path / "again", "services", uid=1000, NGINX="/bin/sh", REDIS_SERVER="/bin/sh")
    assert result.returncode == 0 and calls == [] and result.stdout == result.stderr == ""


@pytest.mark.skipif(MAKE is None, reason="make is not installed")
@pytest.mark.parametrize("uid, sudo", [(0, ""), (1000, "sudo ")])
def test_make_services_failure_says_what_to_run_by_hand(tmp_path, uid, sudo):
    result, _ = run_make(tmp_path, "services", uid=uid, apt_exit=100, **NO_SERVICES)
    line = error_line(result)
    assert "apt-get could not install nginx redis-server" in line
    assert line.endswith(f"by hand: {sudo}apt-get update && {sudo}apt-get install -y nginx redis-server"), line


# ---------------------------------------------------------------- the real stack, slow

@pytest.fixture()
def stack(tmp_path):
    missing = [name for name, var in (("nginx", "NGINX"), ("redis-server", "REDIS_SERVER")) if not find_binary(name, var)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (make services installs Debian's)")
    # The shipped model, as production serves it: an instance boots in about 10 s here, ONNX conversion
    # included. OOD_CHECK=0 only because this test posts a synthetic image and must not depend on ../shared.
    started = time.monotonic()
    running = Stack(tmp_path / "run", instances=2, model_path=str(SHIPPED_MODEL), rate_limit=f"{LIMIT}/hour",
                    env={"OOD_CHECK": "0"}).start()
    running.boot_seconds = time.monotonic() - started
    yield running
    running.stop()


@pytest.mark.slow
def test_two_hosts_behind_nginx_share_the_limit_the_secret_and_survive_losing_one(stack):
    figures = [f"stack: nginx on {stack.url}, instances {', '.join(p.url for p in stack.gunicorns())}, "
               f"redis on port {stack.get('redis').port}; shipped model; ready in {stack.boot_seconds:.1f} s"]
    one, two = stack.gunicorns()
    upstream = {one.url.split("//")[1]: one.name, two.url.split("//")[1]: two.name}
    image = image_bytes((180, 120, 90), size=(300, 225))
    addresses = loopback_addresses()

    # Every host serves the same model file.
    cards = {p.name: requests.get(p.url + "/api/model", timeout=10).json()["sha256"] for p in stack.gunicorns()}
    assert len(set(cards.values())) == 1

    # 1. Requests spread over every instance (each from its own client address: no limit in play).
    spread = [post(stack, image, next(addresses)) for _ in range(20)]
    assert all(status == 200 for status, _, _ in spread), spread[:3]
    log = nginx_log(stack, spread)
    per_instance = {name: 0 for name in upstream.values()}
    for _, _, rid in spread:
        per_instance[upstream[log[rid]["upstream"]]] += 1
    assert all(n > 0 for n in per_instance.values()), per_instance
    figures.append(f"spread: 20 requests via nginx -> {per_instance}")

    # Over the body limit: nginx answers 413 itself, in the service's JSON, before any host sees a byte.
    conn = https(stack, timeout=10)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "image/png")
    conn.putheader("Content-Length", str(11 * 1024 * 1024))
    conn.endheaders()
    big = conn.getresponse()
    assert big.status == 413 and json.loads(big.read())["error"]["code"] == "payload_too_large"
    conn.close()

    # 2. The rate limit holds in total: one client, 3x the limit, half on each host (as nginx forwards it,
    # the client's address in X-Forwarded-For). Then through nginx a forged X-Forwarded-For changes nothing.
    client = "127.0.0.2"
    hosts = [one, two] * (3 * LIMIT // 2)
    statuses = [direct(host, image, client) for host in hosts]
    served = {host.name: sum(1 for h, s in zip(hosts, statuses) if h is host and s == 200) for host in (one, two)}
    assert statuses.count(200) == LIMIT and statuses.count(429) == 2 * LIMIT, statuses
    assert all(n > 0 for n in served.values()), served  # both hosts served part of the one budget
    spoofed, body, _ = post(stack, image, client, headers={"X-Forwarded-For": "203.0.113.9"})
    assert spoofed == 429 and json.loads(body)["error"]["code"] == "too_many_requests"
    figures.append(f"rate limit {LIMIT}/hour, one client, {3 * LIMIT} requests to both hosts: 200 x{statuses.count(200)} "
                   f"{served}, 429 x{statuses.count(429)}; through nginx with a forged X-Forwarded-For: {spoofed}")

    # nginx paces each address at the same rate: of 3x the limit sent at once, PACED_AFTER + 1 go straight to
    # the hosts, a budget's worth waits in nginx, and nginx itself refuses the rest before a host sees them.
    flood = flood_at_once(stack, image, "127.0.0.3", 3 * LIMIT)
    log = nginx_log(stack, [r for r in flood if r[0] is not None])
    answered = [r for r in flood if r[0] is not None and log[r[2]]["upstream"]]
    refused = [r for r in flood if r[0] is not None and not log[r[2]]["upstream"]]
    held = [r for r in flood if r[0] is None]
    assert [s for s, _, _ in answered] == [200] * len(answered) and len(answered) in (PACED_AFTER + 1, PACED_AFTER + 2)
    assert len(refused) >= 3 * LIMIT - (LIMIT + 1) - 1 and {s for s, _, _ in refused} == {429}
    assert json.loads(refused[0][1])["error"]["code"] == "too_many_requests"
    assert len(held) == 3 * LIMIT - len(answered) - len(refused)
    figures.append(f"nginx pacing: {3 * LIMIT} at once from one address: {len(answered)} answered by the hosts, "
                   f"{len(held)} held by nginx, {len(refused)} refused by nginx (429 JSON)")

    # Uploads in progress from one address are capped too (a slow upload holds a connection until its body is in).
    slow = [https(stack, "127.0.0.4", timeout=10) for _ in range(MAX_IN_PROGRESS + 1)]
    for conn in slow:
        conn.putrequest("POST", "/report/txt")
        conn.putheader("Content-Type", "application/x-www-form-urlencoded")
        conn.putheader("Content-Length", "1000")
        conn.endheaders(b"token=")  # and the rest never comes
    time.sleep(0.5)
    capped = slow[-1].getresponse()
    assert capped.status == 429 and json.loads(capped.read())["error"]["code"] == "too_many_requests"
    for conn in slow:
        conn.close()
    assert 'limiting connections by zone "per_address"' in (stack.run_dir / "nginx-error.log").read_text()

    # 3. A report token made on one instance downloads from the other (and the form's CSRF token crosses too).
    browser = requests.Session()
    form = browser.get(one.url + "/", timeout=10).text
    page = browser.post(two.url + "/screen", data={"csrf_token": CSRF_RE.search(form).group(1)},
                        files={"image": ("lesion.png", image, "image/png")}, headers={"Accept": "text/html"}, timeout=30)
    assert page.status_code == 200, page.text[:300]
    token = REPORT_RE.search(page.text).group(1)
    report = browser.post(one.url + "/report/txt", data={"token": token}, timeout=30)  # the token is bound to this session
    assert report.status_code == 200 and report.headers["Content-Type"].startswith("text/plain")
    assert "screening aid" in report.text.lower()
    via_nginx = browser.post(stack.url + "/report/pdf", data={"token": token}, timeout=30, verify=stack.certificate.chain)
    assert via_nginx.status_code == 200 and via_nginx.content.startswith(b"%PDF")
    figures.append(f"token: form loaded on {one.name}, result page (and its {len(token)}-char token) made on "
                   f"{two.name}, text report downloaded from {one.name}: {report.status_code}, "
                   f"{len(report.text)} chars; PDF through nginx: {via_nginx.status_code}")

    # 4. Kill one instance (master and workers, SIGKILL: a host losing power) under load. The load runs
    # 16 s, past nginx's fail_timeout (10 s), so it also shows nginx trying the dead host again and
    # passing those requests on.
    records, lock, stop_at = [], threading.Lock(), time.monotonic() + 16.0
    address_lock = threading.Lock()

    def load():
        while time.monotonic() < stop_at:
            with address_lock:
                source = next(addresses)
            started = time.monotonic()
            status, _, rid = post(stack, image, source)
            with lock:
                records.append((started, time.monotonic(), status, rid))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(3.0)
    killed_at = time.monotonic()
    stack.kill_instance(two.name)
    killed_done = time.monotonic()
    for t in threads:
        t.join()
    assert not alive(two.pid)
    log = nginx_log(stack, records)
    one_addr, two_addr = one.url.split("//")[1], two.url.split("//")[1]
    before = [r for r in records if r[0] < killed_at]
    failed = [r for r in records if r[2] != 200]
    for started, ended, status, rid in failed:
        entry = log[rid]
        # Lost only if it was in flight on the killed instance: nginx had sent it there (the dead host is the
        # only one it tried: a refused connection would have been passed on), around the kill, and it
        # ended in nginx's JSON 503 rather than a hang.
        assert entry["upstream"] == two_addr and entry["upstream_status"] == "502", entry
        assert ended >= killed_at and started <= killed_done + 0.5, (started - killed_at, ended - killed_at)
        assert status == 503 and entry["status"] == 503
    after = [r for r in records if r[0] > killed_done + 0.5]
    assert after and all(r[2] == 200 for r in after)
    assert all(log[r[3]]["upstream"].split(", ")[-1] == one_addr for r in after)
    passed_on = [r for r in records if r[0] > killed_at and log[r[3]]["upstream"] == f"{two_addr}, {one_addr}"]
    assert passed_on, "nginx never tried the dead host again after fail_timeout"
    window = ", ".join(f"{(r[0] - killed_at) * 1000:+.0f}..{(r[1] - killed_at) * 1000:+.0f} ms" for r in sorted(failed))
    figures.append(f"kill: {two.name} SIGKILLed (master and worker) after {len(before)} requests of {len(records)} "
                   f"sent by 6 clients over 16 s; failed {len(failed)}, all in flight on {two.name} (sent..answered, "
                   f"relative to the kill: {window}), each answered 503 JSON by nginx; the {len(after)} started "
                   f"0.5 s or more after the kill all 200 from {one.name}, {len(passed_on)} of them after nginx "
                   f"tried {two.name} again (fail_timeout over), was refused and passed them on")

    # 5. The stack stops cleanly: every process ends on its graceful signal, nothing is left behind.
    outcome = stack.stop()
    assert outcome == {"nginx": "stopped", "gunicorn-1": "stopped", "gunicorn-2": "already gone", "redis": "stopped"}
    assert not any(alive(p.pid) for p in stack.processes)
    with pytest.raises(requests.ConnectionError):
        requests.get(stack.url + "/healthz", timeout=2)
    assert not any((stack.run_dir / "client_body").iterdir())  # no upload was spilled to disk
    assert "emerg" not in (stack.run_dir / "nginx-error.log").read_text()
    figures.append(f"stop: {outcome}; no process left, nginx's port closed, nothing in its body temp folder")
    print("\n" + "\n".join(figures))
