"""The service under a REAL gunicorn (gunicorn.conf.py + wsgi.py), over real HTTP on loopback.

These catch what the Flask test client cannot: the body limit as gunicorn delivers it,
the access log format, worker survival after bad uploads, and the one-line boot errors.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from deploy.processes import worker_pids
from tests.conftest import image_bytes
from tests.fixture_model import RED_CLASS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = [str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py", "wsgi:app"]
BOOT_SECONDS = 90  # two workers each import TensorFlow; the machine may be busy training


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def server_env(**overrides) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SECRET_KEY", "MODEL_PATH", "WEB_CONCURRENCY", *BLAS_THREADS)}
    env.update({"HOST": "127.0.0.1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    env.update({k: v for k, v in overrides.items() if v is not None})
    return env


def serving(base: str) -> bool:
    """Whether the server at ``base`` answers readiness (False while it is not listening or still loading)."""
    try:
        return requests.get(f"{base}/readyz", timeout=2).status_code == 200
    except (requests.ConnectionError, requests.Timeout):
        return False


def wait_until_serving(proc: subprocess.Popen, base: str, log_path: Path, workers: int = 2) -> None:
    """Until gunicorn has ``workers`` workers and answers readiness; fails with its log if it exits or stalls."""
    deadline = time.monotonic() + BOOT_SECONDS
    while len(worker_pids(proc.pid)) < workers or not serving(base):
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, "gunicorn did not become ready:\n" + log_path.read_text()[-3000:]
        time.sleep(0.5)


@pytest.fixture(scope="module")
def live(model_path, tmp_path_factory):
    """A gunicorn on a free loopback port; always stopped in teardown."""
    log_path = tmp_path_factory.mktemp("gunicorn") / "server.log"
    port = free_port()
    env = server_env(MODEL_PATH=str(model_path), SECRET_KEY="live-test-secret", PORT=str(port))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(GUNICORN, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + BOOT_SECONDS
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still loading
                pass
            assert time.monotonic() < deadline, "gunicorn did not become ready:\n" + log_path.read_text()[-3000:]
            time.sleep(0.5)
        # Both workers answer readiness only once each has loaded its model; wait for both.
        deadline = time.monotonic() + BOOT_SECONDS
        while len(worker_pids(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        yield {"base": base, "proc": proc, "log": log_path}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_prediction_over_http(live):
    resp = requests.post(f"{live['base']}/predict", files={"image": ("red.png", image_bytes((220, 30, 30)))}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["prediction"]["code"] == RED_CLASS
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    raw = requests.post(f"{live['base']}/predict", data=image_bytes((220, 30, 30), fmt="JPEG"),
                        headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert raw.status_code == 200 and raw.json()["prediction"]["code"] == RED_CLASS


def test_the_config_gives_numpy_one_blas_thread():
    """OpenBLAS spins a thread per core after each matrix product: it doubled the CPU a request cost.
    A worker imports numpy after gunicorn.conf.py ran (preload_app is off), as this child process does."""
    code = ("import runpy; runpy.run_path('gunicorn.conf.py'); import numpy, threadpoolctl; "
            "print(max(p['num_threads'] for p in threadpoolctl.threadpool_info() if p['internal_api'] == 'openblas'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=server_env(), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "1"


def test_bad_uploads_get_json_errors_and_workers_survive(live):
    base, master = live["base"], live["proc"].pid
    workers_before = worker_pids(master)
    assert len(workers_before) == 2
    big = image_bytes() + b"\x00" * (11 * 1024 * 1024)
    cases = [
        (dict(files={"image": ("big.png", big)}), 413, "payload_too_large"),
        (dict(data=big, headers={"Content-Type": "image/png"}), 413, "payload_too_large"),
        (dict(files={"image": ("notes.jpg", b"plain text, not a photo")}), 415, "unsupported_media_type"),
        (dict(files={"image": ("cut.jpg", image_bytes(fmt="JPEG", size=(200, 200))[:400])}), 422, "invalid_image"),
        (dict(files={"image": ("tiny.png", image_bytes(size=(1, 1)))}), 422, "invalid_image"),
    ]
    for kwargs, status, code in cases:
        resp = requests.post(f"{base}/predict", timeout=30, **kwargs)
        assert resp.status_code == status, (status, resp.text[:200])
        assert resp.json()["error"]["code"] == code
    assert requests.get(f"{base}/predict", timeout=10).status_code == 405
    assert worker_pids(master) == workers_before  # no worker crashed or was restarted
    again = requests.post(f"{base}/predict", files={"image": ("red.png", image_bytes((220, 30, 30)))}, timeout=30)
    assert again.status_code == 200


def test_access_log_is_structured_and_never_names_the_upload(live):
    marker = "secret-patient-name-4821"
    resp = requests.post(f"{live['base']}/predict", files={"image": (f"{marker}.png", image_bytes())},
                         headers={"X-Request-ID": "trace-abc-123"}, timeout=30)
    assert resp.status_code == 200 and resp.headers["X-Request-ID"] == "trace-abc-123"
    deadline = time.monotonic() + 10
    entries = []
    while time.monotonic() < deadline:
        text = live["log"].read_text(errors="replace")
        entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        if any(e["request_id"] == "trace-abc-123" for e in entries):
            break
        time.sleep(0.2)
    mine = [e for e in entries if e["request_id"] == "trace-abc-123"]
    assert len(mine) == 1, text[-2000:]
    assert mine[0]["status"] == 200 and mine[0]["path"] == "/predict" and mine[0]["duration_ms"] >= 0
    assert marker not in text


def test_the_filing_fields_are_printed_but_never_reach_gunicorns_logs(live):
    """A real worker, its JSON access log and its error log: the patient ID and clinician (#35 part 4) are
    on the report it answered and in no line the server wrote, a refusal of a bad value included."""
    filing = {"patient_id": "MRN 5521-ZK", "clinician": "Dr Zoë Quentaro"}
    files = {"image": ("lesion.png", image_bytes())}
    report = requests.post(f"{live['base']}/predict?format=txt", files=files, data=filing,
                           headers={"X-Request-ID": "filing-ok"}, timeout=30)
    assert report.status_code == 200 and "MRN 5521-ZK" in report.text and "Dr Zoë Quentaro" in report.text
    refused = requests.post(f"{live['base']}/predict", files=files, data={**filing, "clinician": "Dr Quentaro <x>"},
                            headers={"X-Request-ID": "filing-bad"}, timeout=30)
    assert refused.status_code == 400 and "Quentaro" not in refused.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and '"filing-bad"' not in live["log"].read_text(errors="replace"):
        time.sleep(0.2)
    text = live["log"].read_text(errors="replace")
    assert '"filing-ok"' in text and '"filing-bad"' in text, "the access log did not record the requests"
    assert "5521" not in text and "Quentaro" not in text


@pytest.mark.parametrize(
    "env, words",
    [
        ({"SECRET_KEY": None, "MODEL_PATH": "{model}"}, "SECRET_KEY is not set"),
        ({"SECRET_KEY": "x", "MODEL_PATH": "/nonexistent/dir/model.h5"}, "model file not found at /nonexistent/dir/model.h5"),
    ],
    ids=["no-secret-key", "missing-model"],
)
def test_boot_errors_are_one_clear_line(env, words, model_path):
    env = {k: (v.format(model=model_path) if v else v) for k, v in env.items()}
    started = time.monotonic()
    # wsgi.py on its own: exactly one line on stderr, exit status 3.
    direct = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=ROOT, env=server_env(**env),
                            capture_output=True, text=True, timeout=120)
    assert direct.returncode == 3
    lines = [line for line in direct.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: ") and words in lines[0], direct.stderr
    # Under gunicorn: the master refuses before forking workers, with the same one line.
    served = subprocess.run(GUNICORN, cwd=ROOT, env=server_env(PORT=str(free_port()), **env),
                            capture_output=True, text=True, timeout=120)
    assert served.returncode == 3
    errors = [line for line in served.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [lines[0]] and "Traceback" not in served.stderr, served.stderr
    assert "Booting worker" not in served.stderr
    assert time.monotonic() - started < 30  # no TensorFlow import on these paths


def answered_by(log_path: Path) -> dict[str, int]:
    """request id -> the pid of the worker that answered it, from the JSON access log."""
    pids = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            pids[entry["request_id"]] = int(entry["pid"].strip("<>"))
    return pids


RESTART_SECONDS = 10  # issue #16: a killed worker's replacement answers within 10 s


def test_a_killed_worker_is_replaced_from_the_onnx_cache_and_answers_within_10_s(live):
    """The first workers filled the ONNX cache; the replacement of a SIGKILLed one starts from it,
    without TensorFlow (none of its libraries mapped), and answers a prediction within 10 s."""
    base, master = live["base"], live["proc"].pid
    before = worker_pids(master)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    replacement, answers, i = None, {}, 0
    while time.monotonic() - killed < 3 * RESTART_SECONDS:
        if replacement is None:
            new = worker_pids(master) - before
            replacement = new.pop() if new else None
        rid = f"restart-probe-{i}"
        i += 1
        try:  # a fresh connection each time, so either worker may take it
            resp = requests.post(f"{base}/predict", files={"image": ("red.png", image_bytes((220, 30, 30)))},
                                 headers={"X-Request-ID": rid, "Connection": "close"}, timeout=10)
            answers[rid] = (time.monotonic() - killed, resp.status_code, resp.json()["prediction"]["code"])
        except (requests.RequestException, ValueError, KeyError):
            pass
        by_pid = answered_by(live["log"])
        mine = [answers[r] for r in answers if by_pid.get(r) == replacement]
        if replacement is not None and mine:
            break
        time.sleep(0.05)
    assert replacement is not None, "gunicorn did not replace the killed worker"
    assert mine, f"the replacement {replacement} answered nothing in {3 * RESTART_SECONDS} s"
    seconds, status, code = mine[0]
    assert status == 200 and code == RED_CLASS
    assert seconds <= RESTART_SECONDS, f"the replacement answered {seconds:.1f} s after the kill"
    maps = Path(f"/proc/{replacement}/maps").read_text()
    assert "tensorflow" not in maps.lower(), "the replacement loaded TensorFlow"
    assert any("onnxruntime" in line for line in maps.splitlines()), "sanity: the maps list the libraries loaded"
