"""The web pages: upload, result, errors and CSRF, through Flask's test client (the model card: test_model_page.py).

The upload posts go through the real form route, the real CSRF check and the real colour
fixture model, so a passing test means a person using the form gets that page.
"""

from __future__ import annotations

import io
import re

import pytest
from markupsafe import escape

from server.lesions import CLASS_CODES, DISCLAIMER, lesion_class
from tests.conftest import image_bytes
from tests.corpus import HEIC_HEADER
from tests.fixture_model import BLUE_CLASS, RED_CLASS

TOKEN_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(client) -> str:
    """Load the upload page as a browser would and read its form's CSRF token."""
    page = client.get("/")
    match = TOKEN_RE.search(page.get_data(as_text=True))
    assert match, "the upload form carries no CSRF token"
    return match.group(1)


def upload(client, data: bytes | None, filename="lesion.png", token=True, extra=None):
    form = {"csrf_token": csrf_token(client)} if token else {}
    if data is not None:
        form["image"] = (io.BytesIO(data), filename)
    form.update(extra or {})
    return client.post("/screen", data=form, content_type="multipart/form-data", headers={"Accept": "text/html"})


def html(response) -> str:
    return response.get_data(as_text=True)


def test_upload_page_has_disclaimer_first_and_a_no_js_form(client):
    page = client.get("/")
    body = html(page)
    assert page.status_code == 200
    assert DISCLAIMER in body
    main = body[body.index("<main"):]
    assert main.index(DISCLAIMER) < main.index("<form"), "the disclaimer comes before the form"
    assert 'method="post"' in body and 'enctype="multipart/form-data"' in body
    assert re.search(r'<input type="file" id="image" name="image" accept="image/jpeg,image/png', body)
    assert '<label for="image"' in body
    assert "up to 10 MB" in body
    assert "/static/upload.js" in body and "/static/style.css" in body
    assert "Screening aid, not a diagnosis." in body


def test_upload_page_tells_the_truth_and_folds_the_full_disclaimer(client):
    body = html(client.get("/"))
    assert "Analysis takes under a second." in body and "few seconds" not in body
    folded = re.search(r'<details class="disclaimer[^"]*" id="disclaimer">\s*<summary[^>]*>Medical disclaimer</summary>\s*<p>([^<]+)</p>',
                       body)
    assert folded and folded.group(1) == DISCLAIMER
    assert re.search(r'<span class="js-only drop-hint">[^<]*drag and drop', body), "the hint a touch screen hides"


def test_reloading_a_result_address_explains_and_offers_the_form(client):
    """GET /screen (a reloaded, bookmarked or shared result): results are not kept, so say so; never a bare 405."""
    response = client.get("/screen", headers={"Accept": "text/html"})
    body = html(response)
    assert response.status_code == 200 and response.mimetype == "text/html"
    notice = re.search(r'<p class="alert alert-notice" id="notice" role="status">([^<]+)</p>', body)
    assert notice and "results are never stored on the server" in notice.group(1)
    assert body.index('id="notice"') < body.index('<form') and TOKEN_RE.search(body), "the form follows, ready to use"
    assert 'id="notice"' not in html(client.get("/"))


@pytest.mark.parametrize("path", ["/", "/model", "/docs", "/screen"])
def test_every_page_links_the_api_reference(client, path):
    footer = html(client.get(path))
    footer = footer[footer.index('<footer'):]
    assert 'href="/docs"' in footer


def test_static_assets_are_served_locally(client):
    body = html(client.get("/"))
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:css|js|svg))"', body)
    assert len(assets) >= 3
    for path in assets:
        assert path.startswith("/static/"), f"{path} is not served by this app (no CDNs)"
        assert client.get(path).status_code == 200


@pytest.mark.parametrize("colour, expected", [((220, 30, 30), RED_CLASS), ((30, 30, 220), BLUE_CLASS)])
def test_form_upload_shows_result_page(client, colour, expected):
    response = upload(client, image_bytes(colour, size=(80, 60)))
    body = html(response)
    assert response.status_code == 200, body[:500]
    assert response.headers["Cache-Control"] == "no-store"
    expected_class = lesion_class(expected)
    predicted = re.search(r'id="predicted-class">([^<]+)<', body).group(1)
    assert predicted == expected_class.name.replace("'", "&#39;")
    assert f'class="risk-badge risk-{expected_class.risk}"' in body
    assert 'src="data:image/jpeg;base64,' in body
    assert body.count(DISCLAIMER) == 1, "the disclaimer in full once (the footer), short elsewhere"
    # the full breakdown: seven bars, sorted, folded below the answer with the other details
    values = [float(v) for v in re.findall(r'class="bar-value">([\d.]+)%<', body)]
    assert len(values) == 7 and values == sorted(values, reverse=True)
    assert abs(sum(values) - 100) < 0.5
    folded = re.findall(r'<details[^>]*id="([\w-]+)"', body)
    assert {"breakdown-details", "numbers-details", "patient-details", "about-details"} <= set(folded)
    assert all(str(escape(lesion_class(code).description)) in body for code in CLASS_CODES)
    # the next step and "Check another image" come before the photo
    assert body.index('id="next-step"') < body.index('id="check-another"') < body.index('id="images-title"')
    # the person can see the heatmap of every class, without JavaScript
    main = re.search(r'id="heatmap-class">([^<]+)<', body).group(1)
    others = re.findall(r'class="result-figure heatmap-choice" id="heatmap-(\w+)"', body)
    assert sorted(others + [c for c in CLASS_CODES if str(escape(lesion_class(c).name)) == main]) == sorted(CLASS_CODES)
    assert 'name="token" value="' in body
    assert ' style="' not in body, "inline styles are blocked by the Content-Security-Policy"


def test_uncertain_result_says_so_and_sends_to_a_dermatologist(client):
    grey = upload(client, image_bytes((128, 128, 128), size=(64, 64)))  # the fixture model is unsure on grey
    body = html(grey)
    assert 'id="confidence"' not in body, "no 'Confidence' under an answer that lists several types"
    assert "See a dermatologist" in body and "none of them" not in body.lower()
    assert 'id="predicted-class"' not in body and 'id="risk-level"' not in body, "an uncertain answer names no class"
    listed = re.search(r'<h1 class="verdict-title" id="verdict">One of: ([^<]+)</h1>', body).group(1).split(", ")
    assert 2 <= len(listed) <= 3  # a card without conformal thresholds: the leading classes
    # the one number: the share of probability the listed types hold, in a sentence that names them
    held = float(re.search(r'id="differential-figure">([\d.]+)%', body).group(1))
    assert held > 50 and "These types together" in body
    assert "risk-low" not in body[:body.index('id="breakdown"')] and "bars-neutral" in body


@pytest.mark.parametrize(
    "data, filename, status, message",
    [
        (None, None, 400, "Please choose a photo to upload."),
        (b"", "", 400, "Please choose a photo to upload."),  # what a browser sends when nothing is picked
        (b"", "empty.png", 400, "The chosen file is empty."),
        (b"%PDF-1.4 not an image at all", "notes.pdf", 415, "not a JPEG or PNG image"),
        (image_bytes(fmt="PNG")[:60], "cut.png", 422, "could not be used"),
        (image_bytes(size=(8, 8)), "tiny.png", 422, "at least 32 px"),
        (HEIC_HEADER, "IMG_0412.HEIC", 415, "iPhone camera&#39;s default format"),  # the one fix: send a JPEG
    ],
)
def test_bad_uploads_re_render_the_form_with_a_friendly_message(client, data, filename, status, message):
    response = upload(client, data, "x.png" if filename is None else filename)
    body = html(response)
    assert response.status_code == status
    assert response.mimetype == "text/html"
    assert message in body
    assert 'id="upload-form"' in body and DISCLAIMER in body


def test_file_just_over_the_limit_is_refused_by_the_page(client):
    too_big = b"\xff\xd8" + b"\0" * (10 * 1024 * 1024)  # under MAX_CONTENT_LENGTH's framing slack
    response = upload(client, too_big, "big.jpg")
    assert response.status_code == 413
    assert "larger than 10 MB" in html(response)
    assert 'id="upload-form"' in html(response)


def test_body_over_max_content_length_gets_the_form_with_its_message(client):
    """Refused before the view runs (a 12 MB upload without JavaScript): the same form, message and focus as a GIF."""
    response = upload(client, b"\0" * (12 * 1024 * 1024), "huge.png")
    assert response.status_code == 413
    assert response.mimetype == "text/html"
    body = html(response)
    assert 'id="upload-form"' in body and DISCLAIMER in body
    assert re.search(r'id="upload-error"[^>]*>The file is larger than 10 MB\. Please choose a smaller photo\.</p>', body)
    assert re.search(r'<input type="file" id="image"[^>]* aria-invalid="true" autofocus>', body)


@pytest.mark.parametrize("data, filename", [(b"GIF89a" + b"\0" * 64, "anim.gif"), (b"\0" * (12 * 1024 * 1024), "big.png")])
def test_form_errors_sit_on_the_form_by_the_focused_file_input(client, data, filename):
    body = html(upload(client, data, filename))
    form = body[body.index('id="upload-form"'):body.index("</form>")]
    assert re.search(r'id="upload-error"[^>]*>[^<]+</p>', form), "the message is inside the form"
    assert "autofocus" in form and 'aria-invalid="true"' in form


def test_api_over_max_content_length_still_answers_json(client):
    response = client.post("/predict", data=b"\0" * (12 * 1024 * 1024), content_type="image/png")
    assert response.status_code == 413 and response.json["error"]["code"] == "payload_too_large"


def test_missing_csrf_token_is_refused(client):
    response = upload(client, image_bytes((220, 30, 30)), token=False)
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert "did not come from this site" in html(response)
    assert "predicted-class" not in html(response)


def test_forged_csrf_token_is_refused(client):
    csrf_token(client)  # a real session exists; the token sent is not its token
    response = client.post("/screen", data={"csrf_token": "forged", "image": (io.BytesIO(image_bytes()), "a.png")})
    assert response.status_code == 400


def test_csrf_is_what_refuses_and_api_is_exempt(model_path):
    """With the model unloaded, a request that passes CSRF reaches the view (503); one without a token stops at 400."""
    from server import create_app

    def build(enabled):
        return create_app({"MODEL_PATH": str(model_path), "LOAD_MODEL": False, "SECRET_KEY": "k",
                           "WTF_CSRF_ENABLED": enabled}).test_client()

    protected = build(True)
    no_token = protected.post("/screen", data={"image": (io.BytesIO(image_bytes()), "a.png")})
    with_token = protected.post("/screen", data={"csrf_token": csrf_token(protected),
                                                 "image": (io.BytesIO(image_bytes()), "a.png")})
    api = protected.post("/predict", data={"image": (io.BytesIO(image_bytes()), "a.png")})
    assert no_token.status_code == 400
    assert with_token.status_code == 503
    assert api.status_code == 503 and api.json["error"]["code"] == "model_unavailable"
    unprotected = build(False)
    assert unprotected.post("/screen", data={"image": (io.BytesIO(image_bytes()), "a.png")}).status_code == 503


def test_json_api_needs_no_csrf_token(client):
    response = client.post("/predict", data={"image": (io.BytesIO(image_bytes((30, 30, 220))), "b.png")})
    assert response.status_code == 200
    assert response.json["prediction"]["code"] == BLUE_CLASS
    assert "total_ms" in response.json["timing"]


def test_error_pages_use_the_layout(client):
    response = client.get("/no-such-page", headers={"Accept": "text/html"})
    body = html(response)
    assert response.status_code == 404
    assert "Sorry, that did not work" in body and DISCLAIMER in body
    assert "Screening aid, not a diagnosis." in body


def test_form_post_over_https_passes_csrf_as_a_browser_would_send_it(client):
    page = client.get("/", base_url="https://screening.example")
    token = TOKEN_RE.search(html(page)).group(1)
    policy = page.headers.get("Referrer-Policy", "strict-origin-when-cross-origin")
    headers = {} if policy == "no-referrer" else {"Referer": "https://screening.example/"}
    response = client.post("/screen", base_url="https://screening.example", headers=headers,
                           data={"csrf_token": token, "image": (io.BytesIO(image_bytes((220, 30, 30))), "a.png")})
    assert response.status_code == 200
