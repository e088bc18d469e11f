"""The test figure an answer quotes, named by what it measured.

A card records balanced accuracy on the test split for more than one way of serving: float32 or
int8, the photo alone or with the patient context. An answer quotes the one that matches how it
was made, and says which, so a reader never takes the photo-alone float32 figure for an int8
answer's or a with-context answer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

INPUTS_PHOTO = "photo alone"
INPUTS_CONTEXT = "photo and patient context"


@dataclass(frozen=True)
class QuotedFigure:
    """Test balanced accuracy measured as ``precision`` with ``inputs``; ``served`` is the precision that answered
    (it differs from ``precision`` only when the card records no figure for the served one)."""

    balanced_accuracy: float
    precision: str  # float32 | int8: the graphs the figure was measured with
    inputs: str  # INPUTS_PHOTO | INPUTS_CONTEXT
    served: str  # float32 | int8: the graphs that answered

    @property
    def name(self) -> str:
        """'float32, photo alone'; 'float32, photo and patient context; int8 served, not measured with it'."""
        name = f"{self.precision}, {self.inputs}"
        return name if self.served == self.precision else f"{name}; {self.served} served, not measured so"

    @classmethod
    def from_dict(cls, data: Mapping | None) -> "QuotedFigure | None":
        return None if not data else cls(float(data["balanced_accuracy"]), str(data["precision"]),
                                         str(data["inputs"]), str(data["served"]))
