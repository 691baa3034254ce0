"""The student's noise floor: the smallest foreground component its teacher ever makes, scaled down.

A label-free student trained on a teacher's masks sometimes predicts specks: a few
pixels of foreground on an image where the teacher sees nothing (on the demo's
lesion-free phantoms these false positives were the main gap to the teacher). The
teacher's own masks on the training images say how small a real target gets: with
``a`` the areas of the connected components of every training target (soft mask > 0.5,
face-connected as in :mod:`medistill.predict.postprocess`, as a fraction of the image's
content pixels),

    min_component = factor · percentile_5(a)          (factor 0.25 by default)

is recorded in the model card (:class:`medistill.export.ModelCard`), and every mask the
student predicts drops the components smaller than that (``medistill predict`` and
``medistill evaluate``; ``--no-noise-floor`` there turns it off). No ground truth is
used: the rule comes from the teacher's masks of the training split only. The factor
keeps a margin below the teacher's small targets (a quarter of its 5th percentile);
measured in benchmarks/RESULTS.md ("The noise floor"); docs/label_free_losses.md.

Example:
    >>> import numpy as np
    >>> soft = np.zeros((2, 8, 8), np.float32); soft[0, :4, :4] = 1; soft[1, 0, 0] = 1
    >>> round(teacher_component_floor(soft, [(8, 8), (8, 8)], factor=0.5), 4)
    0.0137
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medistill.predict.postprocess import components

DEFAULT_FACTOR = 0.25
PERCENTILE = 5.0


def component_fractions(soft: np.ndarray, content: Sequence[tuple[int, int]]) -> np.ndarray:
    """Areas of the components of ``soft > 0.5`` (``(N, S, S)``), each as a fraction of its image's content.

    ``content[i]`` is the (height, width) of image ``i`` inside its padded square.
    """
    fractions = []
    for mask, (height, width) in zip(soft, content):
        sizes = components(mask[:height, :width] > 0.5)[1][1:]
        fractions.extend(sizes / float(height * width))
    return np.asarray(fractions, np.float64)


def teacher_component_floor(soft: np.ndarray, content: Sequence[tuple[int, int]],
                            factor: float = DEFAULT_FACTOR) -> float:
    """``factor`` × the 5th percentile of the teacher's component areas (0 without components or factor)."""
    fractions = component_fractions(soft, content)
    if factor <= 0 or fractions.size == 0:
        return 0.0
    return float(factor * np.percentile(fractions, PERCENTILE))
