"""The card's ``int8`` section: the int8 graphs ``training.quantize`` made of the ``.h5``, tied to it by sha256."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from server.model.card_fields import CardFieldError, rest, section, text, thawed


@dataclass(frozen=True)
class Int8Graph:
    """One int8 graph beside the ``.h5``: its file name and the sha256 of its bytes."""

    file: str
    sha256: str

    @classmethod
    def from_dict(cls, data: Mapping, where: str) -> "Int8Graph":
        return cls(file=text(data, "file", where, required=True), sha256=text(data, "sha256", where, required=True))

    def to_dict(self) -> dict:
        return {"file": self.file, "sha256": self.sha256}


@dataclass(frozen=True)
class Int8Spec:
    """The int8 graphs ``training.quantize`` made of the ``.h5``, and whether they meet the accuracy bar.

    ``source_sha256`` ties them to the ``.h5`` they were quantized from: with any other ``.h5``
    the service serves float32. ``meets_bar`` (None until ``training.int8_bar`` measured it)
    decides whether ``INFERENCE_PRECISION=auto`` serves them."""

    source_sha256: str
    classifier: Int8Graph
    branch: Int8Graph | None = None
    meets_bar: bool | None = None
    extra: Mapping = field(default_factory=dict)  # method, calibration, the bar's figures

    def figure(self, key: str, default=None):
        return self.extra.get(key, default)

    @classmethod
    def from_dict(cls, data: Mapping) -> "Int8Spec":
        w = "int8."
        branch = section(data, "branch")
        meets = data.get("meets_bar")
        if meets is not None and not isinstance(meets, bool):
            raise CardFieldError(f"{w}meets_bar", f"must be true, false or null, got {meets!r}")
        return cls(source_sha256=text(data, "source_sha256", w, required=True),
                   classifier=Int8Graph.from_dict(section(data, "classifier") or {}, f"{w}classifier."),
                   branch=Int8Graph.from_dict(branch, f"{w}branch.") if branch is not None else None,
                   meets_bar=meets, extra=rest(data, cls))

    def to_dict(self) -> dict:
        out = {"source_sha256": self.source_sha256, "classifier": self.classifier.to_dict()}
        if self.branch is not None:
            out["branch"] = self.branch.to_dict()
        return out | {"meets_bar": self.meets_bar} | thawed(self.extra)
