"""The batch CLI's ``--metadata CSV``: the optional patient context per image file.

Columns ``filename,age,sex,site`` (header names in any case; ``age``, ``sex`` and ``site``
may each be left out, a blank cell is "not given"). Every cell is parsed by
``server.patient`` exactly as the API parses a form field, so a value the API would refuse
is refused here too, but for its image only: that image gets the error in its output row
and the run goes on. A file the CLI cannot use at all (unreadable, not UTF-8, no
``filename`` column) is a ``MetadataError``: the CLI stops before loading the model.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from server.patient import PATIENT_FIELDS, PatientContext
from server.problems import ServiceError

FILENAME = "filename"


class MetadataError(ValueError):
    """The metadata CSV cannot be used at all; the message is one line naming the file."""


@dataclass(frozen=True)
class Metadata:
    """Per file name: its parsed context, or the error its row gets. ``warnings``: lines for stderr."""

    contexts: dict[str, PatientContext | ServiceError] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def for_file(self, name: str) -> PatientContext | ServiceError:
        """The context of one image; a file the CSV does not list gets none (the empty context)."""
        return self.contexts.get(name, PatientContext())

    def unmatched(self, names) -> list[str]:
        """CSV file names that match no image: most likely a typo, worth a warning."""
        return sorted(set(self.contexts) - set(names))


def _row_context(row: dict) -> PatientContext | ServiceError:
    """One row's context, or the 400 ``invalid_<field>`` its bad cell gets (the API's own error)."""
    try:
        return PatientContext.parse(*(row.get(name) for name in PATIENT_FIELDS))
    except ServiceError as exc:
        return exc


def read_metadata(path: Path) -> Metadata:
    """Read and parse the whole CSV once, before any image is screened."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: spreadsheets often write a BOM
            reader = csv.DictReader(fh)
            header = [(name or "").strip().lower() for name in (reader.fieldnames or [])]
            if FILENAME not in header:
                found = ", ".join(h for h in header if h) or "none"
                raise MetadataError(f"{path}: no '{FILENAME}' column (columns found: {found}); "
                                    f"expected {FILENAME},{','.join(PATIENT_FIELDS)}")
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader]
    except OSError as exc:
        raise MetadataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MetadataError(f"{path}: not a UTF-8 CSV file ({exc})") from None
    warnings = []
    ignored = [h for h in header if h and h not in (FILENAME, *PATIENT_FIELDS)]
    if ignored:
        warnings.append(f"{path}: ignored columns: {', '.join(ignored)}")
    named = [(number, (row.get(FILENAME) or "").strip(), row) for number, row in rows]
    blank = [str(number) for number, name, _ in named if not name]
    if blank:
        warnings.append(f"{path}: rows without a filename skipped: line {', '.join(blank)}")
    counts = Counter(name for _, name, _ in named if name)
    contexts: dict[str, PatientContext | ServiceError] = {}
    for _, name, row in named:
        if not name:
            continue
        if counts[name] > 1:  # which row is right cannot be guessed: that image is not screened
            contexts[name] = ServiceError(400, "duplicate_metadata",
                                          f"{name} is listed {counts[name]} times in the metadata CSV; list it once.")
        else:
            contexts[name] = _row_context(row)
    return Metadata(contexts=contexts, warnings=tuple(warnings))
