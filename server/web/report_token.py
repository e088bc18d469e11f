"""The report token: a result page's result, encrypted for its own browser session, briefly.

The result page carries what a report needs (the result, the thumbnail, the heatmap's grid)
so the report buttons rebuild it without a second upload and without the server keeping
anything. That token holds health data (the photo's thumbnail, the patient's age, sex and
site, the patient identifier and requesting clinician typed for the printed report, the whole
result), so it is:

- **encrypted and authenticated** (Fernet: AES-128-CBC + HMAC-SHA256) with a key derived from
  ``SECRET_KEY`` by HKDF, so only this service (every host sharing the key) can read it, and an
  altered token is refused;
- **bound to the browser session** that screened the photo: the token names a random binding
  kept in that session's (signed, HttpOnly, SameSite) cookie, so a copied token is useless
  without the cookie;
- **short-lived**: ``REPORT_TOKEN_MAX_AGE_S``, 30 minutes, ample to read the page and click
  "download", after which the photo must be uploaded again.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
import zlib
from dataclasses import replace

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app, session

from server.filing import FilingDetails
from server.prediction import Prediction
from server.problems import ServiceError

REPORT_TOKEN_MAX_AGE_S = 30 * 60
KEY_PURPOSE = b"lesion-screening report token v2"  # another purpose than the session's and CSRF's signatures
SESSION_BINDING = "report_binding"
UPLOAD_AGAIN = "Please upload the image again."


def report_key(secret_key: str) -> Fernet:
    """A Fernet key of its own, derived from SECRET_KEY: the raw secret also signs cookies."""
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_PURPOSE).derive(secret_key.encode("utf-8"))
    return Fernet(base64.urlsafe_b64encode(raw))


def session_binding() -> str:
    """This browser session's random report binding, made on its first result."""
    if SESSION_BINDING not in session:
        session[SESSION_BINDING] = secrets.token_urlsafe(16)
    return session[SESSION_BINDING]


def max_age_s() -> int:
    return int(current_app.config.get("REPORT_TOKEN_MAX_AGE_S", REPORT_TOKEN_MAX_AGE_S))


def sign_report(prediction: Prediction, filing: FilingDetails = FilingDetails()) -> str:
    """Encrypt the result, its thumbnail and the filing details for this session, so a later report request
    needs no storage: the patient identifier and clinician live in this token, held by the browser, alone."""
    thumb = base64.b64encode(prediction.thumbnail).decode("ascii") if prediction.thumbnail else None
    # The heatmap travels as its small grid (49 integers for MobileNetV2), not as a picture:
    # the PDF redraws the overlay from the grid and the thumbnail, so the token stays small.
    payload = {"binding": session_binding(), "prediction": prediction.to_dict(heatmap_png=False), "thumbnail": thumb,
               "filing": filing.to_dict()}
    packed = zlib.compress(json.dumps(payload, separators=(",", ":")).encode("utf-8"))
    return report_key(current_app.config["SECRET_KEY"]).encrypt_at_time(packed, int(time.time())).decode("ascii")


def _open(token: str) -> dict:
    """Decrypt and check age, or raise the 400 a person can act on (expired, or not from here)."""
    fernet = report_key(current_app.config["SECRET_KEY"])
    try:
        return json.loads(zlib.decompress(fernet.decrypt_at_time(token.encode("ascii"), max_age_s(), int(time.time()))))
    except InvalidToken:
        pass
    except (UnicodeEncodeError, zlib.error, ValueError):
        raise invalid_token() from None
    try:  # authentic but refused: it can only be too old
        fernet.extract_timestamp(token.encode("ascii"))
    except (InvalidToken, UnicodeEncodeError):
        raise invalid_token() from None
    raise ServiceError(400, "report_expired", f"This result is more than {max_age_s() // 60} minutes old, too old "
                       f"to make a report from. {UPLOAD_AGAIN}")


def invalid_token(why: str = "it was changed or did not come from this service") -> ServiceError:
    return ServiceError(400, "invalid_report_token", f"This report link is not valid: {why}. {UPLOAD_AGAIN}")


def load_report(token: str | None) -> tuple[Prediction, FilingDetails]:
    """Verify, decrypt and unpack a report token made for this session, or raise a 400 ServiceError."""
    if not token:
        raise ServiceError(400, "missing_report_token", f"This report request carries no result. {UPLOAD_AGAIN}")
    data = _open(token)
    mine = session.get(SESSION_BINDING)
    if not isinstance(data, dict) or not mine or not secrets.compare_digest(str(data.get("binding")), mine):
        raise invalid_token("it belongs to another browser session")
    try:
        prediction = Prediction.from_dict(data["prediction"])
        thumbnail = base64.b64decode(data["thumbnail"], validate=True) if data.get("thumbnail") else None
        filing = FilingDetails.from_dict(data.get("filing"))  # a token from before the fields: none given
    except (KeyError, TypeError, ValueError, binascii.Error, ServiceError):
        raise invalid_token() from None
    return replace(prediction, thumbnail=thumbnail), filing
