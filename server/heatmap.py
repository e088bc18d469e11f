"""The Grad-CAM heatmap value a Prediction carries: a grid for the report token, a picture for JSON."""

from __future__ import annotations

import base64
from dataclasses import dataclass


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
