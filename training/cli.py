"""How the trainer's commands end on a mistake their user can fix: one ``error:`` line and exit status 2.

A missing folder, a data row the service would refuse, a resume under another recipe, a new run
over a cut-off one, a download that cannot be had, a run folder without its model: each is the
user's to fix, and a traceback hides the one line that says how. Any other exception is a
defect and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys

from server.model.files import ModelLoadError
from training.config import RecipeChanged
from training.data import DatasetError
from training.phases import CutRunInTheWay
from training.preflight import Unavailable

USER_ERRORS = (FileNotFoundError, DatasetError, RecipeChanged, CutRunInTheWay, Unavailable, ModelLoadError)


def user_errors_in_one_line(main):
    """Wrap a command's ``main(argv) -> int`` so that ``USER_ERRORS`` print one line and return 2."""
    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        try:
            return main(argv)
        except USER_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return wrapped
