"""Golden outputs: what /predict answers, the result and model pages, the text and PDF reports.

Each output is compared byte for byte with a file under ``tests/golden/`` after only what
must differ between runs is replaced by a placeholder: timings, dates other than the
screening's, the fixture model's sha256 (its .h5 is re-exported every session), CSRF and
report tokens, the CSP nonce. The screening's own time and report id are not hidden: the
clock and the id are fixed (``fixed_record``), so the report header, the JSON's ``report``
and the local time in REPORT_TIMEZONE are compared like everything else. A PDF is compared
as a dump of every object in it, streams decompressed, in file order.

These tests talk to the service through ``create_app`` and HTTP only, so they survive any
reorganisation of the code behind it. Regenerate the files (after a *wanted* change, and
read the diff) with ``GOLDEN_UPDATE=1 python -m pytest tests/test_golden.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path

from datetime import datetime, timezone
from itertools import count

import numpy as np
import pytest
from PIL import Image

from server import filing

from tests.conftest import image_bytes
from tests.test_differential import differential_model  # noqa: F401  (fixture: conformal thresholds in the card)
from tests.test_ood import ood_model, skin_like  # noqa: F401  (fixture: the colour model with non-skin statistics)
from tests.test_pages import csrf_token, upload

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("GOLDEN_UPDATE") == "1"
RED = image_bytes((220, 30, 30), size=(80, 60))
MIXED = image_bytes((150, 60, 120), size=(64, 64))  # no class dominates: an uncertain answer
# The screening's clock in these tests: 00:30 UTC on the night Paris moves to summer time (01:30 CET).
SCREENED_AT = datetime(2026, 3, 29, 0, 30, 0, tzinfo=timezone.utc)
FIXED_DAY = SCREENED_AT.strftime("%Y-%m-%d")
# What a clinic types for the printed report, and the file's own name: accents and a # to print.
FILING = {"patient_id": "MRN 0048213-7 #2", "clinician": "Dr Zoë Ñúñez"}
FILENAME = "IMG_2041 left shoulder.png"


@pytest.fixture(autouse=True)
def fixed_record(monkeypatch):
    """The screening's time and report ids, made deterministic: the same outputs every run, compared in full."""
    ids = count(1)
    monkeypatch.setattr(filing, "utc_now", lambda: SCREENED_AT)
    monkeypatch.setattr(filing, "new_report_id", lambda: f"LSR-G0LD-0000-0000-{next(ids):04d}")


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"{path} missing: run with GOLDEN_UPDATE=1 once"
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        first = next(i for i, (a, b) in enumerate(zip(text + "\0", expected + "\0")) if a != b)
        raise AssertionError(f"{name} differs from its golden file at character {first}:\n"
                             f"got      {text[max(0, first - 80):first + 80]!r}\n"
                             f"expected {expected[max(0, first - 80):first + 80]!r}")


def normalise(text: str, sha: str) -> str:
    """Replace what legitimately changes between runs by placeholders."""
    for n in (64, 16, 12):
        text = text.replace(sha[:n], f"<sha256:{n}>")
    text = re.sub(r'"(inference_ms|explain_ms|total_ms)": ?-?[\d.eE+-]+', r'"\1": 0', text)
    text = re.sub(rf"(?!{FIXED_DAY})\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)?", "<iso-time>", text)
    text = re.sub(rf"(?!{FIXED_DAY})\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "<time> UTC", text)
    text = re.sub(r"D:\d{14}[^)]*", "D:<pdf-time>", text)
    text = re.sub(r'name="(csrf_token|token)" value="[^"]+"', r'name="\1" value="<token>"', text)
    text = re.sub(r"nonce=\"[^\"]+\"", 'nonce="<nonce>"', text)
    text = re.sub(r"analysed in \d+ ms", "analysed in <n> ms", text)
    return text


def pdf_value(obj) -> str:
    """A PDF value as text, references by object number (pypdf's repr carries a Python id)."""
    from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject

    if isinstance(obj, IndirectObject):
        return f"@{obj.idnum}"
    if isinstance(obj, DictionaryObject):
        return "{" + ", ".join(f"{k}: {pdf_value(v)}" for k, v in sorted(obj.items())) + "}"
    if isinstance(obj, ArrayObject):
        return "[" + ", ".join(pdf_value(v) for v in obj) + "]"
    return repr(obj)


def pdf_dump(data: bytes) -> str:
    """Every indirect object of a PDF in file order; streams decompressed (binary ones as sha256)."""
    from pypdf import PdfReader
    from pypdf.generic import StreamObject

    reader = PdfReader(io.BytesIO(data))
    lines = [f"pages {len(reader.pages)}"]
    for generation, objects in sorted(reader.xref.items()):
        for idnum in sorted(objects):
            obj = reader.get_object(idnum)
            if isinstance(obj, StreamObject):
                head = {k: pdf_value(v) for k, v in obj.items() if k not in ("/Length", "/Filter", "/DecodeParms")}
                body = obj.get_data()
                try:
                    shown = body.decode("ascii")
                    if not shown.isprintable() and not all(c.isprintable() or c in "\r\n\t" for c in shown):
                        raise ValueError
                except ValueError:
                    shown = f"<{len(body)} bytes sha256 {hashlib.sha256(body).hexdigest()}>"
                lines.append(f"{idnum} {generation} stream {sorted(head.items())}\n{shown}")
            else:
                lines.append(f"{idnum} {generation} {pdf_value(obj)}")
    info = reader.trailer.get("/Info")
    lines.append(f"info {pdf_value(info.get_object())}" if info is not None else "info none")
    return "\n".join(lines) + "\n"


def card_sha(model_file: Path) -> str:
    return json.loads(model_file.with_name("model_card.json").read_text())["sha256"]


@pytest.fixture(scope="module")
def calibrated_model(model_path, tmp_path_factory):
    """The colour fixture with a card that carries calibration, an uncertain threshold, TTA and test figures."""
    d = tmp_path_factory.mktemp("golden-calibrated")
    shutil.copy(model_path, d / model_path.name)
    card = json.loads(model_path.with_name("model_card.json").read_text())
    card["calibration"] = {"temperature": 1.5, "temperature_by_tta": {"off": 1.5, "flips": 1.4, "full": 1.3},
                           "ece_test_before": 0.12, "ece_test_after": 0.03}
    card["thresholds"]["uncertain"] = 0.7
    card["tta"] = {"default": "flips"}
    card["metrics"]["test"].update(n=120, macro_auc_ovr=0.91, log_loss=0.8,
                                   malignant={"sensitivity": 0.91, "specificity": 0.62})
    (d / "model_card.json").write_text(json.dumps(card))
    return d / model_path.name


def make_client(model_file: Path, zone: str = "UTC"):
    from server import create_app

    return create_app({"MODEL_PATH": str(model_file), "TESTING": True, "SECRET_KEY": "golden",
                       "REPORT_TIMEZONE": zone}).test_client()


def filed(image: bytes) -> dict:
    """A multipart upload as a clinic sends it for a report: the file's name and the filing fields."""
    return {"image": (io.BytesIO(image), FILENAME), **FILING}


def outputs(client, image: bytes, sha: str, prefix: str) -> None:
    """JSON (plain and explained), the text and PDF reports, the result page and the report downloads."""
    plain = client.post("/predict", data=image, content_type="image/png")
    assert plain.status_code == 200
    check(f"{prefix}_predict.json", normalise(plain.get_data(as_text=True), sha))
    explained = client.post("/predict?explain=1", data=image, content_type="image/png")
    check(f"{prefix}_predict_explain.json", normalise(explained.get_data(as_text=True), sha))
    txt = client.post("/predict?format=txt", data=filed(image), content_type="multipart/form-data")
    assert txt.status_code == 200 and txt.mimetype == "text/plain"
    check(f"{prefix}_report.txt", normalise(txt.get_data(as_text=True), sha))
    for paper in ("a4", "letter"):
        pdf = client.post(f"/predict?format=pdf&paper={paper}", data=filed(image), content_type="multipart/form-data")
        assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
        check(f"{prefix}_report_{paper}.pdf.txt", normalise(pdf_dump(pdf.data), sha))
    page = upload(client, image, filename=FILENAME, extra=FILING)
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    check(f"{prefix}_result.html", normalise(body, sha))
    token = re.search(r'name="token" value="([^"]+)"', body).group(1)
    form = {"csrf_token": csrf_token(client), "token": token}
    from_token = client.post("/report/txt", data=form)
    assert from_token.status_code == 200
    check(f"{prefix}_report_from_page.txt", normalise(from_token.get_data(as_text=True), sha))
    pdf = client.post("/report/pdf", data=form)
    assert pdf.status_code == 200
    check(f"{prefix}_report_from_page.pdf.txt", normalise(pdf_dump(pdf.data), sha))


def test_outputs_of_the_plain_fixture_model(model_path):
    client = make_client(model_path, zone="Europe/Paris")  # the reports give the local time beside UTC
    sha = card_sha(model_path)
    outputs(client, RED, sha, "plain")
    check("plain_model.html", normalise(client.get("/model").get_data(as_text=True), sha))
    check("plain_api_model.json", normalise(client.get("/api/model").get_data(as_text=True), sha))


def test_outputs_of_a_calibrated_model_with_an_uncertain_answer(calibrated_model):
    client = make_client(calibrated_model)
    sha = card_sha(calibrated_model)
    outputs(client, MIXED, sha, "calibrated")
    check("calibrated_model.html", normalise(client.get("/model").get_data(as_text=True), sha))


def test_outputs_of_the_non_skin_check(ood_model):  # noqa: F811 (the imported fixture)
    client = make_client(ood_model)
    sha = card_sha(ood_model)
    buf = io.BytesIO()
    Image.fromarray(skin_like(np.random.default_rng(7), 1)[0]).save(buf, format="PNG")
    ok = client.post("/predict?explain=1", data=buf.getvalue(), content_type="image/png")
    assert ok.status_code == 200
    check("ood_predict_skin.json", normalise(ok.get_data(as_text=True), sha))
    refused = client.post("/predict", data=image_bytes((30, 200, 40)), content_type="image/png")
    assert refused.status_code == 422
    check("ood_predict_refused.json", normalise(refused.get_data(as_text=True), sha))
    page = upload(client, image_bytes((30, 200, 40)))
    assert page.status_code == 422
    check("ood_refused_form.html", normalise(page.get_data(as_text=True), sha))
    check("ood_model.html", normalise(client.get("/model").get_data(as_text=True), sha))


def test_outputs_of_a_model_with_a_differential(differential_model):  # noqa: F811 (the imported fixture)
    """Conformal thresholds in the card: a list of several types on grey, and /model's coverage table."""
    client = make_client(differential_model)
    sha = card_sha(differential_model)
    outputs(client, image_bytes((128, 128, 128), size=(64, 64)), sha, "differential")
    check("differential_model.html", normalise(client.get("/model").get_data(as_text=True), sha))
