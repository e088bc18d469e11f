"""Per-client rate limits (#7, #38): on by default, counted once for all of a host's workers,
and spent by report downloads too.

Before #38 the limit was off unless RATE_LIMIT was set, each gunicorn worker counted alone
(RATE_LIMIT=5/minute let 10 requests through on 2 workers), and POST /report/* was never
limited. The suite itself runs with both limits off (tests/conftest.py); these tests set them.
"""

from __future__ import annotations

import io
import multiprocessing
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests

from server import create_app
from server.web.shared_counts import WorkerSharedStorage, share_across_workers
from tests.conftest import image_bytes
from tests.corpus import RED
from tests.test_gunicorn import GUNICORN, answered_by, free_port, server_env, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent


def limited_app(monkeypatch, model_path, **env):
    """An app built from the environment, as gunicorn builds it; unset limits get their defaults."""
    for name in ("RATE_LIMIT", "REPORT_RATE_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return create_app({"MODEL_PATH": str(model_path), "SECRET_KEY": "x", "TESTING": True})


def screen(client, **kwargs):
    return client.post("/predict", data=image_bytes(RED), content_type="image/png", **kwargs)


def test_screening_is_limited_by_default_at_60_a_minute(monkeypatch, model_path):
    app = limited_app(monkeypatch, model_path)
    assert app.config["RATE_LIMIT"] == "60/minute" and app.config["REPORT_RATE_LIMIT"] == "120/minute"
    client = app.test_client()
    statuses = [screen(client).status_code for _ in range(61)]
    assert statuses == [200] * 60 + [429]


def test_off_turns_a_limit_off(monkeypatch, model_path):
    client = limited_app(monkeypatch, model_path, RATE_LIMIT="off").test_client()
    assert all(screen(client).status_code == 200 for _ in range(65))


def result_token(client) -> str:
    form = {"image": (io.BytesIO(image_bytes(RED)), "lesion.png")}
    page = client.post("/screen", data=form, content_type="multipart/form-data", headers={"Accept": "text/html"})
    assert page.status_code == 200
    return re.search(r'name="token" value="([^"]+)"', page.get_data(as_text=True)).group(1)


def test_report_downloads_have_their_own_default_budget(monkeypatch, model_path):
    """With the screening budget spent, reports still render, but not without end (120 a minute)."""
    app = limited_app(monkeypatch, model_path, RATE_LIMIT="1/minute")
    app.config["WTF_CSRF_ENABLED"] = False
    client = app.test_client()
    token = result_token(client)
    assert screen(client).status_code == 429  # the screening budget is spent
    statuses = [client.post("/report/txt", data={"token": token}).status_code for _ in range(121)]
    assert statuses == [200] * 120 + [429]
    refused = client.post("/report/pdf", data={"token": token}, headers={"Accept": "application/json"})
    assert refused.status_code == 429 and refused.json["error"]["code"] == "too_many_requests"
    assert int(refused.headers["Retry-After"]) > 0


def test_rate_limit_answers_429_json_after_the_limit(monkeypatch, model_path):
    client = limited_app(monkeypatch, model_path, RATE_LIMIT="3/minute").test_client()
    assert [screen(client).status_code for _ in range(3)] == [200, 200, 200]
    limited = screen(client)
    assert limited.status_code == 429 and limited.mimetype == "application/json"
    assert limited.json["error"]["code"] == "too_many_requests"
    assert "3 per 1 minute" in limited.json["error"]["message"]
    assert int(limited.headers["Retry-After"]) > 0
    assert limited.headers["X-Request-ID"]  # the usual headers still apply
    # Per client: another address has its own budget; probes and docs are never limited.
    assert screen(client, environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 200
    assert all(client.get("/healthz").status_code == 200 for _ in range(5))
    assert client.get("/openapi.json").status_code == 200


def test_rate_limit_budget_is_shared_with_the_upload_form(monkeypatch, model_path):
    """The form's POST /screen runs the same model: it must not be a way around the limit."""
    app = limited_app(monkeypatch, model_path, RATE_LIMIT="2/minute")
    app.config["WTF_CSRF_ENABLED"] = False
    client = app.test_client()
    form = {"image": (io.BytesIO(image_bytes(RED)), "lesion.png")}
    assert client.post("/screen", data=form, content_type="multipart/form-data").status_code == 200
    assert screen(client).status_code == 200
    assert screen(client).status_code == 429
    form = {"image": (io.BytesIO(image_bytes(RED)), "lesion.png")}
    page = client.post("/screen", data=form, content_type="multipart/form-data", headers={"Accept": "text/html"})
    assert page.status_code == 429 and page.mimetype == "text/html"


@pytest.mark.parametrize("name", ["RATE_LIMIT", "REPORT_RATE_LIMIT"])
def test_bad_rate_limit_refuses_to_start(monkeypatch, name):
    from server.boot import boot_problem

    assert f"{name}='sixty' is not a rate" in boot_problem({"SECRET_KEY": "x", name: "sixty"})
    monkeypatch.setenv(name, "sixty")
    monkeypatch.setenv("LOAD_MODEL", "0")
    with pytest.raises(SystemExit, match="is not a rate"):
        create_app()


# ---------------------------------------------------------------- one count for every worker

def _hit(uri: str, key: str, times: int, out) -> None:
    storage = WorkerSharedStorage(uri)
    out.put([storage.incr(key, 60) for _ in range(times)])


def test_forked_processes_spend_one_shared_count():
    """What gunicorn does: the master makes the table, forked workers count in it together."""
    environ = {}
    uri = share_across_workers(environ, workers=2)
    assert uri and environ["RATE_LIMIT_STORAGE_URI"] == uri
    assert share_across_workers({}, workers=1) is None  # one worker: plain memory is already one count
    assert share_across_workers({"RATE_LIMIT_STORAGE_URI": "redis://h:6379/0"}, workers=2) is None
    fork = multiprocessing.get_context("fork")
    out = fork.Queue()
    workers = [fork.Process(target=_hit, args=(uri, "client-a", 50, out)) for _ in range(3)]
    for w in workers:
        w.start()
    counts = sorted(n for _ in workers for n in out.get(timeout=30))
    for w in workers:
        w.join(timeout=30)
    assert counts == list(range(1, 151))  # every increment seen once, by exactly one process
    storage = WorkerSharedStorage(uri)
    assert storage.get("client-a") == 150 and storage.get("client-b") == 0
    assert time.time() < storage.get_expiry("client-a") <= time.time() + 60
    storage.clear("client-a")
    assert storage.get("client-a") == 0


def test_a_window_that_ended_starts_again():
    storage = WorkerSharedStorage(share_across_workers({}, workers=2))
    assert [storage.incr("k", 1) for _ in range(3)] == [1, 2, 3]
    time.sleep(1.1)
    assert storage.get("k") == 0 and storage.incr("k", 1) == 1


@pytest.mark.slow
def test_two_gunicorn_workers_share_one_budget(model_path, tmp_path):
    """RATE_LIMIT=5/minute on gunicorn's 2 workers: 5 answers in all, not 5 per worker."""
    port = free_port()
    log_path = tmp_path / "server.log"
    env = server_env(MODEL_PATH=str(model_path), SECRET_KEY="rate-secret", PORT=str(port), WEB_CONCURRENCY="2",
                     RATE_LIMIT="5/minute")
    env.pop("RATE_LIMIT_STORAGE_URI", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(GUNICORN, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(proc, base, log_path)
        time.sleep(3)  # the second worker loads its model too (readiness answered by either)
        statuses, pids = [], set()
        for i in range(40):  # a fresh connection each: either worker may take it; go on until both have
            resp = requests.post(f"{base}/predict", data=image_bytes(RED), timeout=30,
                                 headers={"Content-Type": "image/png", "Connection": "close", "X-Request-ID": f"r{i}"})
            statuses.append(resp.status_code)
            time.sleep(0.3)  # the access log line is written just after the answer
            pids = set(answered_by(log_path).values())
            if len(pids) == 2 and i >= 11:
                break
        assert len(pids) == 2, "one worker took every request: the test shows nothing"
        assert statuses.count(200) == 5 and statuses[:5] == [200] * 5, statuses
        assert "one count shared by the 2 workers" in log_path.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
