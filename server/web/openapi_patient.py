"""The patient context in the OpenAPI document: the optional multipart fields and their echo.

Built from ``server.patient`` (field names, ``SEXES``, ``SITES``, the age range), so the
document lists exactly the values the parser accepts; ``server/web/openapi.py`` places
these pieces in ``POST /predict``.
"""

from __future__ import annotations

from server.patient import GENERAL_SITES, MAX_AGE, MIN_AGE, PATIENT_FIELDS, SEXES, SITES

AGE = {"type": "number", "minimum": MIN_AGE, "maximum": MAX_AGE}
SEX = {"type": "string", "enum": list(SEXES)}
SITE = {"type": "string", "enum": [*SITES, *GENERAL_SITES]}
ERROR_CODES = tuple(f"invalid_{name}" for name in PATIENT_FIELDS)

# The multipart fields beside ``image``, each optional. Text on the wire, like any form field.
FORM_FIELDS = {
    "age": {**AGE, "description": f"Optional: the patient's age in years, {MIN_AGE} to {MAX_AGE}. Left out, empty or "
                                  "`unknown`: not given. Anything else is 400 `invalid_age`."},
    "sex": {**SEX, "description": "Optional: `female` or `male` (any case; `f` and `m` too). Left out, empty or "
                                  "`unknown`: not given. Anything else is 400 `invalid_sex`."},
    "site": {**SITE, "description": "Optional: where on the body the lesion is, in HAM10000's words or in ISIC's "
                                    "general anatomic sites (`head/neck`, `anterior torso`, ...), which the model reads "
                                    "as the HAM10000 sites they cover (any case; `_` or `-` for a space). Left out, "
                                    "empty or `unknown`: not given. Anything else is 400 `invalid_site`."},
}

# The echo in every 200 answer.
ECHO = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"age": AGE, "sex": SEX, "site": SITE},
    "description": "The patient context sent with the image (multipart fields age, sex, site), as the service read "
                   "it: only the fields that were given, so `{}` when none was. Always present.",
}

# ``error.field`` of a 400 for a bad patient field.
ERROR_FIELD = {"type": "string", "enum": list(PATIENT_FIELDS),
               "description": "400 invalid_age, invalid_sex, invalid_site only: the multipart field to correct."}
