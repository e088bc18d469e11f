"""What a clinic needs to file a report: whom it is about and who asked, and the report's own record.

Two small values, kept apart on purpose:

- ``FilingDetails``, the patient identifier and the requesting clinician a person may type in.
  They identify a patient, so they are printed on the report and nowhere else: not in the JSON
  answer, not in ``Prediction``, never stored or logged (their ``repr`` hides them, so neither an
  error report nor a debugger's log line can show them). The limits and the refusal wording
  live here alone, for the API and the form alike.
- ``ReportRecord``, what makes one report traceable: a random report id, the image's file name
  and SHA-256, the time in the deployment's time zone and the precision served. It travels in
  the JSON (``report``) and on both reports, so a filed paper can be matched to an answer.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from server.problems import ServiceError

FILING_FIELDS = ("patient_id", "clinician")  # the form and multipart field names, in display order
FILING_LABELS = {"patient_id": "Patient ID", "clinician": "Requesting clinician"}
FILING_MAX_CHARS = 64
# Beyond letters (with their accents) and digits: what identifiers and names use. The typographic
# apostrophe is a phone keyboard's default in a name such as O’Brien.
FILING_PUNCTUATION = " .,-_/'#’"
# The PDF prints in the standard PDF fonts, whose encoding (WinAnsi, Windows-1252) holds the
# Western Latin letters (Zoë, Ñúñez, Šimon, Œ). A name in another alphabet is printed in DejaVu
# Sans, the font matplotlib (a dependency) ships: only alphabets written left to right without
# shaping, because reportlab draws text as given (Arabic or Hebrew would come out unjoined and
# backwards, and the font has no CJK). Anything else is refused with a clear 400 rather than
# printed as blank boxes on a report a clinic files.
PRINTABLE_ENCODING = "cp1252"
PRINTED_SCRIPTS = ("LATIN", "GREEK", "CYRILLIC", "ARMENIAN", "GEORGIAN")  # Unicode names' first word
FILING_RULE = (f"at most {FILING_MAX_CHARS} characters: letters of the Latin, Greek, Cyrillic, Armenian or Georgian "
               "alphabets (accents allowed), digits, spaces and . , - _ / ' # (no angle brackets or control characters)")
FILING_PRINTED_ONLY = "Printed on the report only; the server never stores or logs them."
MAX_FILENAME_CHARS = 120
DEFAULT_REPORT_TIMEZONE = "UTC"
REPORT_ID_PREFIX = "LSR"


def bad_filing_field(name: str, detail: str) -> ServiceError:
    """The one 400 for a filing field the user got wrong; it names the field, never echoes the value."""
    return ServiceError(400, f"invalid_{name}", detail, {"field": name})


def unicode_font_file() -> Path:
    """DejaVu Sans as matplotlib ships it: the PDF's font for what Windows-1252 cannot encode."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


@lru_cache(maxsize=1)
def unicode_font_characters() -> frozenset[int]:
    """The code points DejaVu Sans has a glyph for (read once, when a name first needs it)."""
    from reportlab.pdfbase.ttfonts import TTFontFile

    return frozenset(TTFontFile(str(unicode_font_file())).charToGlyph)


def in_standard_fonts(text: str) -> bool:
    """Whether the standard PDF fonts print ``text`` (else the report prints it in DejaVu Sans)."""
    try:
        text.encode(PRINTABLE_ENCODING)
    except UnicodeEncodeError:
        return False
    return True


def allowed_filing_character(ch: str) -> bool:
    """The listed punctuation, or a letter or decimal digit the report's fonts can print."""
    if ch in FILING_PUNCTUATION:
        return True
    category = unicodedata.category(ch)
    if category[0] != "L" and category != "Nd":
        return False
    if in_standard_fonts(ch):
        return True
    return unicodedata.name(ch, "").split(" ")[0] in PRINTED_SCRIPTS and ord(ch) in unicode_font_characters()


def parse_filing_text(name: str, text) -> str | None:
    """A typed identifier or name -> the value to print (None when left empty), or a 400 saying why not.

    NFC first, so 'Zoë' typed with a combining diaeresis counts and prints as one letter;
    surrounding spaces are dropped, inner ones kept.
    """
    if text is None:
        return None
    value = unicodedata.normalize("NFC", str(text)).strip(" ")
    if not value:
        return None
    if len(value) > FILING_MAX_CHARS:
        raise bad_filing_field(name, f"{name} must be {FILING_RULE}; it has {len(value)} characters.")
    for position, ch in enumerate(value, start=1):
        if not allowed_filing_character(ch):
            what = "a control character" if unicodedata.category(ch)[0] == "C" else unicodedata.name(ch, "unnamed")
            raise bad_filing_field(name, f"{name} must be {FILING_RULE}; character {position} ({what}) is not allowed.")
    return value


@dataclass(frozen=True)
class FilingDetails:
    """Whom the report is about and who asked for it; every field optional, printed only."""

    patient_id: str | None = field(default=None, repr=False)
    clinician: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, patient_id=None, clinician=None) -> "FilingDetails":
        """From user text (form or multipart fields); raises a 400 ``ServiceError`` for a bad value."""
        return cls(patient_id=parse_filing_text("patient_id", patient_id),
                   clinician=parse_filing_text("clinician", clinician))

    @property
    def given(self) -> bool:
        return self.patient_id is not None or self.clinician is not None

    def to_dict(self) -> dict:
        """The given fields, for the encrypted report token only (never the JSON answer)."""
        return {name: getattr(self, name) for name in FILING_FIELDS if getattr(self, name) is not None}

    @classmethod
    def from_dict(cls, data) -> "FilingDetails":
        """Back from ``to_dict``, checked again: a token is input too."""
        data = data if isinstance(data, dict) else {}
        return cls.parse(*(data.get(name) for name in FILING_FIELDS))

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) of the given fields, in display order, for the reports' header."""
        return [(FILING_LABELS[name], getattr(self, name)) for name in FILING_FIELDS if getattr(self, name)]


def report_timezone(name: str | None) -> ZoneInfo:
    """The deployment's ``REPORT_TIMEZONE`` as a zone, or ValueError naming the setting and an example."""
    name = (name or "").strip() or DEFAULT_REPORT_TIMEZONE
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"REPORT_TIMEZONE={name!r} is not an IANA time zone name such as 'Europe/Paris' "
                         "or 'UTC'") from None


def new_report_id() -> str:
    """A random id a clinic can read out and type: 80 bits in four groups of Crockford-style base32."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # no I, L, O, U: nothing to misread
    digits = "".join(alphabet[secrets.randbelow(32)] for _ in range(16))
    return "-".join([REPORT_ID_PREFIX] + [digits[i:i + 4] for i in range(0, 16, 4)])


def utc_now() -> datetime:
    """The screening's time (one clock, so a test can fix it)."""
    return datetime.now(timezone.utc).replace(microsecond=0)


def image_name(filename: str | None) -> str | None:
    """The uploaded file's own name, as the person's computer called it, safe to print.

    Browsers may send a path ('C:\\fakepath\\x.jpg'); control characters are dropped and a
    long name is cut in the middle, keeping its extension.
    """
    if not filename:
        return None
    name = re.split(r"[\\/]", str(filename))[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if len(name) > MAX_FILENAME_CHARS:
        half = (MAX_FILENAME_CHARS - 1) // 2
        name = name[:half] + "…" + name[-half:]
    return name or None


@dataclass(frozen=True)
class ReportRecord:
    """One report's identity: its id, the image it read, when (in UTC and locally), the precision that answered."""

    report_id: str
    image_sha256: str
    image_filename: str | None
    created_at: str  # ISO 8601 in UTC, the same instant as ``Prediction.created_at``
    timezone: str  # REPORT_TIMEZONE, an IANA name
    precision: str  # float32 | int8: the arithmetic that served this answer

    @classmethod
    def made(cls, upload: bytes, filename: str | None, precision: str, when: datetime,
             zone: str = DEFAULT_REPORT_TIMEZONE) -> "ReportRecord":
        """The record of a screening of ``upload`` at ``when``, with a fresh report id."""
        return cls(report_id=new_report_id(), image_sha256=hashlib.sha256(upload).hexdigest(),
                   image_filename=image_name(filename), created_at=when.astimezone(timezone.utc).isoformat(),
                   timezone=report_timezone(zone).key, precision=precision)

    @property
    def local_time(self) -> datetime:
        return datetime.fromisoformat(self.created_at).astimezone(report_timezone(self.timezone))

    def to_dict(self) -> dict:
        """The JSON's ``report`` object (documented in ``/openapi.json``)."""
        return {"id": self.report_id, "image": {"filename": self.image_filename, "sha256": self.image_sha256},
                "time": {"utc": self.created_at, "local": self.local_time.isoformat(), "timezone": self.timezone},
                "precision": self.precision}

    @classmethod
    def from_dict(cls, data) -> "ReportRecord | None":
        """Back from ``to_dict`` (a report token); None for a token without one."""
        if not data:
            return None
        return cls(report_id=data["id"], image_sha256=data["image"]["sha256"],
                   image_filename=data["image"].get("filename"), created_at=data["time"]["utc"],
                   timezone=data["time"]["timezone"], precision=data["precision"])

    def time_words(self) -> str:
        """'2026-12-06 23:06:50 UTC', and the deployment's local time beside it when its zone is not UTC:
        '2026-12-06 23:06:50 UTC (2026-12-07 00:06:50 CET, Europe/Paris)'."""
        utc = datetime.fromisoformat(self.created_at).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        if self.timezone in ("UTC", "Etc/UTC"):
            return utc
        return f"{utc} ({self.local_time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {self.timezone})"
