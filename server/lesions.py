"""The class catalogue: the one place that says what each HAM10000 class is.

The model, the API, the pages and the reports all read class codes, names, risk
levels and advice from here, so a wording change or a new class is made once.
The order of ``CLASS_CODES`` is the order of the model's output units (alphabetical,
as HAM10000 and Keras' directory loaders use), and the model card repeats it so a
mismatch between a model and this catalogue is caught at load time.
"""

from __future__ import annotations

from dataclasses import dataclass

DISCLAIMER = (
    "This is a screening aid, not a diagnosis. It was trained on dermoscopic images and can be "
    "wrong. Only a qualified clinician, usually after examination and if needed a biopsy, can "
    "diagnose a skin lesion. If you are worried about a lesion, see a doctor."
)

RISK_LEVELS = ("high", "moderate", "low")

# HAM10000 has no skin-type column: said among the limitations and beside the per-subgroup table. It
# ends the skin-type limitation rather than adding a line, which would push the PDF report onto a second page.
SKIN_TYPE_NOT_RECORDED = "HAM10000 does not record Fitzpatrick skin type."
SKIN_TYPES_OVER_REPRESENTED = ("HAM10000 comes from Austrian and Australian clinics: lighter skin types are over-represented, "
                               "and results on darker skin are less reliable.")

# What the model cannot do, said on the model page, in every model card and in the PDF report.
LIMITATIONS = (
    "Trained on dermoscopic images only: photos taken with a dermatoscope, not ordinary phone photos; "
    "not validated on smartphone or clinical close-up photos.",
    f"{SKIN_TYPES_OVER_REPRESENTED} {SKIN_TYPE_NOT_RECORDED}",
    "Seven classes only: other conditions are forced into one of them.",
    "Rare classes (dermatofibroma, vascular lesions) have few training examples; their figures are uncertain.",
    "Not a diagnosis: a clinician must examine any lesion of concern.",
)


@dataclass(frozen=True)
class LesionClass:
    """One diagnostic class as a patient-facing tool must describe it."""

    code: str
    name: str
    risk: str  # one of RISK_LEVELS
    malignant: bool
    description: str
    advice: str
    in_words: str = ""  # the class inside a sentence, lower case: "melanoma", "a mole (melanocytic nevus)"


CATALOGUE: tuple[LesionClass, ...] = (
    LesionClass(
        code="akiec",
        name="Actinic keratosis / intraepithelial carcinoma (Bowen's disease)",
        risk="high",
        malignant=True,
        description=(
            "Rough, scaly patches caused by sun damage. Actinic keratoses are pre-cancerous and "
            "Bowen's disease is an early, superficial form of squamous cell carcinoma."
        ),
        advice="See a dermatologist: these lesions are usually treated, and some progress to skin cancer.",
        in_words="actinic keratosis",
    ),
    LesionClass(
        code="bcc",
        name="Basal cell carcinoma",
        risk="high",
        malignant=True,
        description=(
            "The most common skin cancer. It grows slowly and rarely spreads, but it can damage "
            "the tissue around it if left untreated. Often a pearly bump or a sore that does not heal."
        ),
        advice="See a dermatologist soon: basal cell carcinoma needs treatment.",
        in_words="basal cell carcinoma",
    ),
    LesionClass(
        code="bkl",
        name="Benign keratosis-like lesion",
        risk="low",
        malignant=False,
        description=(
            "Seborrhoeic keratoses, solar lentigines and lichen-planus-like keratoses: common, "
            "harmless growths that can look worrying because they are dark or warty."
        ),
        advice="Usually harmless. Have it checked if it changes, itches or bleeds.",
        in_words="a benign keratosis-like lesion",
    ),
    LesionClass(
        code="df",
        name="Dermatofibroma",
        risk="low",
        malignant=False,
        description=(
            "A small, firm, benign nodule in the skin, often on the legs, sometimes after a minor "
            "injury such as an insect bite."
        ),
        advice="Usually harmless. Have it checked if it grows or changes.",
        in_words="a dermatofibroma",
    ),
    LesionClass(
        code="mel",
        name="Melanoma",
        risk="high",
        malignant=True,
        description=(
            "A cancer of the pigment cells. It can spread to other organs, so finding it early "
            "matters most. Warning signs: asymmetry, irregular border, several colours, a diameter "
            "over 6 mm, and change over time."
        ),
        advice="See a dermatologist promptly: a suspected melanoma should be examined without delay.",
        in_words="melanoma",
    ),
    LesionClass(
        code="nv",
        name="Melanocytic nevus (mole)",
        risk="low",
        malignant=False,
        description=(
            "A common mole: a benign cluster of pigment cells. Most adults have many of them."
        ),
        advice="Usually harmless. Watch for changes in size, shape or colour and have those checked.",
        in_words="a mole (melanocytic nevus)",
    ),
    LesionClass(
        code="vasc",
        name="Vascular lesion",
        risk="moderate",
        malignant=False,
        description=(
            "Lesions of the blood vessels such as cherry angiomas, angiokeratomas and pyogenic "
            "granulomas. Most are benign, but some bleed easily or look like other lesions."
        ),
        advice="Usually benign. Have it checked if it bleeds, grows quickly or you are unsure.",
        in_words="a vascular lesion",
    ),
)

CLASS_CODES: tuple[str, ...] = tuple(c.code for c in CATALOGUE)
MALIGNANT_CODES: frozenset[str] = frozenset(c.code for c in CATALOGUE if c.malignant)
_BY_CODE = {c.code: c for c in CATALOGUE}
# The malignant classes, the most dangerous first, as the pages and reports name them.
MALIGNANT_IN_WORDS_ORDER = ("mel", "bcc", "akiec")


def malignant_in_words() -> str:
    """'melanoma, basal cell carcinoma or actinic keratosis': what "malignant" adds up, in words."""
    codes = sorted(MALIGNANT_CODES, key=lambda c: (MALIGNANT_IN_WORDS_ORDER + (c,)).index(c))
    names = [_BY_CODE[c].in_words for c in codes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def lesion_class(code: str) -> LesionClass:
    """Look a class up by its HAM10000 code; KeyError names the unknown code."""
    try:
        return _BY_CODE[code]
    except KeyError:
        raise KeyError(f"unknown lesion class code {code!r}; known: {', '.join(CLASS_CODES)}") from None
