"""Patient context: the optional age, sex and body site a user may give beside the photo.

One place says which values exist, how a user's text becomes a ``PatientContext`` (or a
clear 400), and how the context becomes the model's second input. The trainer encodes
HAM10000's metadata with the same ``model_vector``, so the network never sees a context
encoded differently from the one it learned on.

Encoding, ``MODEL_VECTOR_SIZE`` floats: one-hot age band (``MODEL_AGE_EDGES``: the risk of
each class rises and falls with age, which one number cannot say to a linear layer), then
one-hot sex (female, male), then one-hot site (``SITES``). Anything unknown is all zeros,
so "not given" is an ordinary input, the one the trainer's metadata dropout teaches.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from server.problems import ServiceError

PATIENT_FIELDS = ("age", "sex", "site")  # the form, multipart and CSV field names, in display order
SEXES = ("female", "male")
# HAM10000's ``localization`` values, less its "unknown".
SITES = (
    "abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
    "lower extremity", "neck", "scalp", "trunk", "upper extremity",
)
# What a person reads for each site (select options, pages, reports): HAM10000's words are
# kept as the values, but "acral" or "upper extremity" are not plain language on their own.
SITE_WORDS = {
    "abdomen": "abdomen", "acral": "palm or sole (acral)", "back": "back", "chest": "chest", "ear": "ear",
    "face": "face", "foot": "foot", "genital": "genital area", "hand": "hand",
    "lower extremity": "leg (lower extremity)", "neck": "neck", "scalp": "scalp", "trunk": "trunk",
    "upper extremity": "arm (upper extremity)",
}
# ISIC's general anatomic sites, the words other clinics' records use -> the HAM10000 sites each
# covers ("upper extremity" and "lower extremity" are HAM10000's words too, and stay its own).
GENERAL_SITES = {
    "head/neck": ("face", "scalp", "ear", "neck"), "anterior torso": ("chest", "abdomen"),
    "posterior torso": ("back",), "lateral torso": ("trunk",), "palms/soles": ("acral",),
    "oral/genital": ("genital",),
}
GENERAL_SITE_WORDS = {
    "head/neck": "head or neck", "anterior torso": "front of the torso", "posterior torso": "back of the torso",
    "lateral torso": "side of the torso", "palms/soles": "palm or sole", "oral/genital": "mouth or genital area",
}
# How often HAM10000's metadata names each site (all 10,015 images). A general site enters the model
# as the sites it covers mixed in these proportions: the one-hot it would have on average, so
# "head/neck" reads mostly as the face, as HAM10000's head and neck lesions mostly are.
HAM10000_SITE_COUNTS = {
    "abdomen": 1022, "acral": 7, "back": 2192, "chest": 407, "ear": 56, "face": 745, "foot": 319, "genital": 48,
    "hand": 90, "lower extremity": 2077, "neck": 168, "scalp": 128, "trunk": 1404, "upper extremity": 1118,
}
FIELD_WORDS = {"age": "age", "sex": "sex", "site": "body site"}
PATIENT_LABEL = "Patient context"
NONE_GIVEN = "none given"
MIN_AGE, MAX_AGE = 0, 120
# The model's age bands: [0, 15), [15, 30), ... [80, 120]. HAM10000 gives ages in 5-year steps.
MODEL_AGE_EDGES = (15, 30, 40, 50, 60, 70, 80)
AGE_SLICE = slice(0, len(MODEL_AGE_EDGES) + 1)
SEX_SLICE = slice(AGE_SLICE.stop, AGE_SLICE.stop + len(SEXES))
SITE_SLICE = slice(SEX_SLICE.stop, SEX_SLICE.stop + len(SITES))
MODEL_VECTOR_SIZE = SITE_SLICE.stop
UNKNOWN_WORDS = frozenset({"", "unknown", "none", "null", "n/a", "na", "not given", "not known", "-"})
# Age bands for the per-subgroup metrics, (label, lowest age, highest age exclusive).
AGE_BANDS = (("<30", 0, 30), ("30-44", 30, 45), ("45-59", 45, 60), ("60-74", 60, 75), (">=75", 75, 1000))


def bad_patient_field(field: str, detail: str) -> ServiceError:
    """The one 400 for a patient field the user got wrong."""
    return ServiceError(400, f"invalid_{field}", detail, {"field": field})


def _is_unknown(text) -> bool:
    return text is None or (isinstance(text, float) and math.isnan(text)) or str(text).strip().lower() in UNKNOWN_WORDS


def parse_age(text) -> float | None:
    """A user's age text -> years (None when not given), or a 400 naming the allowed range."""
    if _is_unknown(text):
        return None
    try:
        age = float(str(text).strip())
    except ValueError:
        raise bad_patient_field("age", f"age must be a number of years from {MIN_AGE} to {MAX_AGE}; got {str(text)[:40]!r}.") from None
    if not math.isfinite(age) or not MIN_AGE <= age <= MAX_AGE:
        raise bad_patient_field("age", f"age must be from {MIN_AGE} to {MAX_AGE} years; got {str(text)[:40]!r}.")
    return age


def parse_sex(text) -> str | None:
    """'female' / 'male' (any case; 'f' / 'm' too) -> the value, None when not given, else a 400."""
    if _is_unknown(text):
        return None
    value = str(text).strip().lower()
    value = {"f": "female", "m": "male"}.get(value, value)
    if value not in SEXES:
        raise bad_patient_field("sex", f"sex must be one of {', '.join(SEXES)} (or left out); got {str(text)[:40]!r}.")
    return value


def parse_site(text) -> str | None:
    """A body site in HAM10000's words or ISIC's general ones (case, '_' and '-' forgiven) -> the value,
    None when not given, else a 400."""
    if _is_unknown(text):
        return None
    value = re.sub(r"\s*/\s*", "/", re.sub(r"[\s_\-]+", " ", str(text).strip().lower()))
    if value not in SITES and value not in GENERAL_SITES:
        raise bad_patient_field("site", f"site must be one of: {', '.join(SITES)}; or one of ISIC's general sites: "
                                        f"{', '.join(GENERAL_SITES)} (or left out); got {str(text)[:40]!r}.")
    return value


def site_words(site: str) -> str:
    """What a person reads for a site value, HAM10000's or ISIC's general one."""
    return SITE_WORDS.get(site) or GENERAL_SITE_WORDS[site]


def covered_sites(site: str) -> tuple[str, ...]:
    """The HAM10000 sites a site value stands for: itself, or those an ISIC general site covers."""
    return (site,) if site in SITES else GENERAL_SITES[site]


def site_vector(site: str) -> np.ndarray:
    """The site part of the model's input: one-hot for a HAM10000 site, the covered sites' mix for a general one."""
    out = np.zeros(len(SITES), np.float32)
    covered = covered_sites(site)
    counts = np.array([HAM10000_SITE_COUNTS[c] for c in covered], np.float64)
    out[[SITES.index(c) for c in covered]] = counts / counts.sum()
    return out


@dataclass(frozen=True)
class PatientContext:
    """What the user told us about the patient and the lesion; every field optional."""

    age: float | None = None
    sex: str | None = None
    site: str | None = None

    @classmethod
    def parse(cls, age=None, sex=None, site=None) -> "PatientContext":
        """From user text (form fields, CSV cells); raises a 400 ``ServiceError`` for a bad value."""
        return cls(age=parse_age(age), sex=parse_sex(sex), site=parse_site(site))

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.age, self.sex, self.site))

    def to_dict(self) -> dict:
        """The fields that were given (JSON, reports); an empty dict when none was.

        A whole age is written as an integer (70, not 70.0): it echoes what the user typed.
        """
        age = int(self.age) if self.age is not None and float(self.age).is_integer() else self.age
        return {k: v for k, v in (("age", age), ("sex", self.sex), ("site", self.site)) if v is not None}

    @classmethod
    def from_dict(cls, data) -> "PatientContext":
        """Back from ``to_dict`` (a signed report token); None or {} is the empty context."""
        data = data or {}
        return cls.parse(*(data.get(name) for name in PATIENT_FIELDS))

    def describe(self) -> str:
        """The context in plain words, the same on the page and in both reports.

        'age 70, male, back'; 'age 70; not given: sex, body site'; or 'none given'. A reader
        must see what the screening was told, and that a missing field was not guessed.
        """
        given = self.to_dict()
        if not given:
            return NONE_GIVEN
        words = [f"age {given['age']}" if "age" in given else None, given.get("sex"),
                 site_words(given["site"]) if "site" in given else None]
        text = ", ".join(w for w in words if w)
        missing = [FIELD_WORDS[name] for name in PATIENT_FIELDS if name not in given]
        return text + (f"; not given: {', '.join(missing)}" if missing else "")

    def sentence(self) -> str:
        """'Patient context: age 70, male, back.' (what the page and the reports print)."""
        return f"{PATIENT_LABEL}: {self.describe()}."

    def model_vector(self) -> np.ndarray:
        """The model's second input, (``MODEL_VECTOR_SIZE``,) float32; all zeros when nothing was given."""
        return model_vectors([self.age], [self.sex], [self.site])[0]


def model_vectors(ages, sexes, sites) -> np.ndarray:
    """Encode many contexts at once (the trainer's HAM10000 metadata): (n, ``MODEL_VECTOR_SIZE``) float32.

    Values must already be parsed or be HAM10000's own ('unknown' and NaN read as not given).
    """
    n = len(ages)
    out = np.zeros((n, MODEL_VECTOR_SIZE), np.float32)
    for i, (age, sex, site) in enumerate(zip(ages, sexes, sites)):
        age = parse_age(age)
        if age is not None:
            out[i, AGE_SLICE.start + int(np.searchsorted(MODEL_AGE_EDGES, age, side="right"))] = 1.0
        sex = parse_sex(sex)
        if sex is not None:
            out[i, SEX_SLICE.start + SEXES.index(sex)] = 1.0
        site = parse_site(site)
        if site is not None:
            out[i, SITE_SLICE] = site_vector(site)
    return out


def age_band(age) -> str:
    """The subgroup label of an age in years ('unknown' when not given)."""
    if _is_unknown(age):
        return "unknown"
    age = float(age)
    return next(label for label, low, high in AGE_BANDS if low <= age < high)
