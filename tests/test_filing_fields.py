"""The filing fields' limits, in one place (#35, part 4): what a patient identifier or a clinician's
name may hold, and how a refusal names the field without echoing the value."""

from __future__ import annotations

import pytest

from server.filing import FILING_MAX_CHARS, FilingDetails, parse_filing_text
from server.problems import ServiceError
from tests.test_report_filing import CLINICIAN, PATIENT_ID, leaked


@pytest.mark.parametrize("typed, kept", [
    ("Zoë Ñúñez", "Zoë Ñúñez"),
    ("Zoe\u0308", "Zoë"),  # a combining diaeresis is composed (NFC): one letter, as printed
    ("  MRN 0048213-7  ", "MRN 0048213-7"),
    ("Dr O’Brien, ward 4/B #2", "Dr O’Brien, ward 4/B #2"),
    ("x" * FILING_MAX_CHARS, "x" * FILING_MAX_CHARS),
    ("Dr Łukasz Wójcik", "Dr Łukasz Wójcik"), ("Иванова А. П.", "Иванова А. П."), ("Παπαδόπουλος", "Παπαδόπουλος"),
    ("Nguyễn Thị Hường", "Nguyễn Thị Hường"), ("Gülşen Yılmaz", "Gülşen Yılmaz"),
    ("", None), ("   ", None), (None, None),
])
def test_a_filing_field_keeps_names_and_identifiers(typed, kept):
    assert parse_filing_text("patient_id", typed) == kept


@pytest.mark.parametrize("typed, why", [
    ("x" * (FILING_MAX_CHARS + 1), f"it has {FILING_MAX_CHARS + 1} characters"),
    ("<script>alert(1)</script>", "character 1 (LESS-THAN SIGN)"),
    ("MRN\n123", "character 4 (a control character)"),
    ("MRN\x00123", "character 4 (a control character)"),
    ("A\u202eB", "character 2 (a control character)"),  # right-to-left override: would reorder the printed id
    ("王医生", "character 1 (CJK UNIFIED IDEOGRAPH-738B)"),  # the report's fonts have no glyph for it
    ("Dr حسن", "character 4 (ARABIC LETTER HAH)"),  # reportlab would draw it unjoined, left to right
    ("Dr כהן", "character 4 (HEBREW LETTER KAF)"),
    ("id; DROP", "character 3 (SEMICOLON)"),
])
def test_a_bad_filing_field_is_a_400_that_names_the_field_and_never_echoes_the_value(typed, why):
    with pytest.raises(ServiceError) as refused:
        FilingDetails.parse(clinician=typed)
    error = refused.value
    assert (error.status, error.code, error.details) == (400, "invalid_clinician", {"field": "clinician"})
    assert why in error.message and "at most 64 characters" in error.message
    assert typed not in error.message and typed[:3] not in error.message.replace("at most", "")


def test_filing_details_hide_their_values_from_repr():
    """A traceback, a debugger or a stray log line that prints the value shows no patient."""
    details = FilingDetails.parse(PATIENT_ID, CLINICIAN)
    assert leaked(repr(details)) == [] and leaked(str(details)) == []
    assert details.rows() == [("Patient ID", PATIENT_ID), ("Requesting clinician", CLINICIAN)]
