"""The Grad-CAM values a Prediction carries: each class's heatmap (a grid for the report token, a picture for
JSON), and the explanation that groups the one shown with the others asked for."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Heatmap:
    """Grad-CAM for one class: where in the centre square the evidence for it lies.

    ``grid`` is the map at the feature map's resolution (7x7 for MobileNetV2) as integers
    0..255: compact enough for the signed report token. ``png`` is the overlay on the
    image the model saw, drawn from the grid by ``server.model.explain.render``; a
    Prediction rebuilt from a report token has the grid only, and the PDF redraws the
    overlay from it and the thumbnail with the same renderer.
    """

    class_code: str
    grid: tuple[tuple[int, ...], ...]
    png: bytes | None = None

    def to_dict(self, with_png: bool = True) -> dict:
        out = {"class": self.class_code, "grid": [list(row) for row in self.grid]}
        if with_png and self.png is not None:
            out["png_base64"] = base64.b64encode(self.png).decode("ascii")
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Heatmap":
        png = base64.b64decode(data["png_base64"], validate=True) if data.get("png_base64") else None
        return cls(class_code=data["class"], grid=tuple(tuple(int(v) for v in row) for row in data["grid"]), png=png)


@dataclass(frozen=True)
class Explanation:
    """Why the model answered as it did: ``heatmap`` for the class shown (the flagged malignant type or
    the top class, unless the caller named one) and, when a page asked for every class, the
    ``others`` as grids (no pictures), so it can switch the heatmap without a second model pass."""

    heatmap: Heatmap
    others: tuple[Heatmap, ...] = ()

    def for_class(self, code: str) -> Heatmap | None:
        """The heatmap of class ``code``: the one shown, or its grid among the others."""
        if self.heatmap.class_code == code:
            return self.heatmap
        return next((h for h in self.others if h.class_code == code), None)

    def to_dict(self, with_png: bool = True) -> dict:
        """The JSON's ``heatmap`` and, when there are others, ``class_heatmaps``."""
        out = {"heatmap": self.heatmap.to_dict(with_png=with_png)}
        if self.others:
            out["class_heatmaps"] = [h.to_dict(with_png=False) for h in self.others]
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "Explanation | None":
        """From a JSON answer (or report token) that may hold no heatmap at all."""
        if not data.get("heatmap"):
            return None
        return cls(Heatmap.from_dict(data["heatmap"]), tuple(Heatmap.from_dict(h) for h in data.get("class_heatmaps") or ()))
