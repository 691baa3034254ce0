"""The names of MedDistill's loss terms and weightings, defined once (no heavy imports).

See docs/label_free_losses.md for what each term is, docs/methods.md §1 for the method.
"""

from __future__ import annotations

# Every loss term a MedDistill run can use, in the order they are logged.
TERM_NAMES = ("bce", "prob", "dice", "proj", "outside", "feat")
# The terms of the released MedDistill (the ULWR rule weights exactly these).
RELEASED_TERMS = ("bce", "prob", "feat")
# The terms of a default run ("feat" only when the teacher has features).
DEFAULT_TERMS = ("bce", "dice", "proj", "outside", "feat")
WEIGHTINGS = ("ulwr", "learned", "fixed")
SCHEDULES = ("constant", "cosine")  # the student's learning rate over a run
