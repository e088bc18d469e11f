"""The upload form's optional patient fields, through the real form route, CSRF and fixture model.

Without JavaScript the server is the only check, so each case is the page a person gets:
the fields, a result that says what it was told, a report made from the page that says the
same, and a wrong value shown by its field with everything typed kept.
"""

from __future__ import annotations

import re

import pytest

from server.patient import GENERAL_SITES, SITES
from tests.conftest import image_bytes
from tests.test_ood import ood_model  # noqa: F401  (fixture: the colour model with non-skin statistics)
from tests.test_pages import csrf_token, html, upload

RED = image_bytes((220, 30, 30), size=(80, 60))


def tag(body: str, element: str, element_id: str) -> str:
    """The opening tag of the element with this id (attributes in the order the template writes them)."""
    match = re.search(rf'<{element}\b[^>]*\bid="{element_id}"[^>]*>', body)
    assert match, f"no <{element} id={element_id}>"
    return match.group(0)


def selected(body: str, select_id: str) -> list[str]:
    block = re.search(rf'<select\b[^>]*id="{select_id}".*?</select>', body, flags=re.S).group(0)
    return re.findall(r'<option value="([^"]*)" selected>', block)


def field_error(body: str, field: str) -> str:
    return re.search(rf'<p class="field-error" id="{field}-error" role="alert">([^<]*)</p>', body).group(1)


def test_the_form_offers_three_optional_labelled_fields(client):
    body = html(client.get("/"))
    fieldset = re.search(r'<fieldset class="patient-fields".*?</fieldset>', body, flags=re.S).group(0)
    assert re.search(r"<legend>About the patient <span[^>]*>\(optional\)</span></legend>", fieldset)
    assert "leave blank if unknown" in fieldset.lower()
    for field in ("age", "sex", "site"):
        assert f'<label for="{field}">' in fieldset
    age = tag(fieldset, "input", "age")
    for attribute in ('type="number"', 'name="age"', 'inputmode="numeric"', 'min="0"', 'max="120"', 'value=""'):
        assert attribute in age, attribute
    assert "required" not in age and "autofocus" not in age
    for select in ("sex", "site"):
        options = re.findall(r'<option value="([^"]*)"', re.search(rf'id="{select}".*?</select>', fieldset, re.S).group(0))
        assert options[0] == "", "the first choice, the default, is 'Not given'"
        assert selected(fieldset, select) == []
    site_options = re.findall(r'<option value="([^"]*)"', re.search(r'id="site".*?</select>', fieldset, re.S).group(0))
    assert sorted(site_options[1:]) == sorted([*SITES, *GENERAL_SITES])
    assert re.search(r'<optgroup label="Coarser, as many clinics record it">(?:(?!</optgroup>).)*value="anterior torso"',
                     fieldset, re.S)
    assert ">Palm or sole (acral)</option>" in fieldset
    assert body.index('id="image"') < body.index("<fieldset") < body.index('id="submit"')
    assert ' style="' not in body and "<script>" not in body, "the Content-Security-Policy allows neither"


def test_the_result_and_its_reports_say_what_was_given(client):
    response = upload(client, RED, extra={"age": "70", "sex": "male", "site": "back"})
    body = html(response)
    assert response.status_code == 200, body[:300]
    assert '<p id="patient-context">Patient context: age 70, male, back.</p>' in body
    token = re.search(r'name="token" value="([^"]+)"', body).group(1)
    text = client.post("/report/txt", data={"csrf_token": csrf_token(client), "token": token}).get_data(as_text=True)
    assert "Patient context:      age 70, male, back\n" in text, "the signed token carries the context"
    none = html(upload(client, RED))
    assert '<p id="patient-context">Patient context: none given.</p>' in none


@pytest.mark.parametrize("fields, field, words", [
    ({"age": "130", "sex": "female", "site": "back"}, "age", "from 0 to 120"),
    ({"age": "-3", "sex": "", "site": "face"}, "age", "from 0 to 120"),
    ({"age": "40", "sex": "female", "site": "elbow"}, "site", "body site from the list"),
    ({"age": "40", "sex": "robot", "site": "neck"}, "sex", "sex from the list"),
])
def test_a_bad_value_comes_back_by_its_field_with_the_values_kept(client, fields, field, words):
    response = upload(client, RED, extra=fields)
    body = html(response)
    assert response.status_code == 400 and response.mimetype == "text/html"
    assert 'id="upload-form"' in body and 'id="verdict"' not in body, "the form again, no result"
    assert words in field_error(body, field) and "choose the photo again" in field_error(body, field)
    assert re.search(r'<p class="field-error" id="upload-error"[^>]*></p>', body), "the file input has no error of its own"
    element = "input" if field == "age" else "select"
    assert 'aria-invalid="true"' in tag(body, element, field) and "autofocus" in tag(body, element, field)
    assert "autofocus" not in tag(body, "input", "image") and "aria-invalid" not in tag(body, "input", "image")
    for other in {"age", "sex", "site"} - {field}:
        assert field_error(body, other) == ""
    assert f'value="{fields["age"]}"' in tag(body, "input", "age"), "the age typed is shown again to correct"
    for select in ("sex", "site"):
        assert selected(body, select) == ([fields[select]] if fields[select] in ("female", "back", "face", "neck") else [])


def test_an_image_error_keeps_the_patient_values(client):
    response = upload(client, b"GIF89a not really", "x.gif", extra={"age": "55", "sex": "female", "site": "scalp"})
    body = html(response)
    assert response.status_code == 415 and "not a JPEG or PNG image" in body
    assert 'value="55"' in tag(body, "input", "age")
    assert selected(body, "sex") == ["female"] and selected(body, "site") == ["scalp"]
    assert "autofocus" in tag(body, "input", "image") and "autofocus" not in tag(body, "input", "age")


def test_a_refused_image_keeps_the_patient_values(ood_model):  # noqa: F811 (the imported fixture)
    from server import create_app

    client = create_app({"MODEL_PATH": str(ood_model), "TESTING": True, "SECRET_KEY": "t"}).test_client()
    response = upload(client, image_bytes((30, 200, 40)), extra={"age": "33", "site": "hand"})
    body = html(response)
    assert response.status_code == 422 and 'id="refusal-message"' in body
    assert 'value="33"' in tag(body, "input", "age") and selected(body, "site") == ["hand"]


def test_a_body_over_the_limit_still_gets_the_form(client):
    """The 413 is raised while the body is read: there are no values to keep, and no crash trying."""
    too_big = b"\xff\xd8" + b"\0" * (11 * 1024 * 1024)
    response = upload(client, too_big, "big.jpg", extra={"age": "70"})
    body = html(response)
    assert response.status_code == 413 and "larger than 10 MB" in body
    assert 'value=""' in tag(body, "input", "age")
