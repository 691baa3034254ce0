"""Boxes for the projection term, tightened to the teacher's mask inside each box.

The projection (box-tightness) term asks the student's mask to reach every row and
column of a box. That is right for a tight box and wrong for a loose one: a detector box
larger than its object pulls the student's mask out to the box's edges. On the demo's
phantoms a quarter of the detector's boxes have ≥ 1.6× the area of the true lesion's
box (docs/label_free_losses.md, "Tight boxes", in "The added terms").

:func:`tighten_boxes` replaces each box by the bounding box of the teacher's mask for it
(probability > ``threshold``, pixels whose centre lies in the box), so the term asks for
the extent the teacher found, never beyond the detector's box. A box whose teacher mask
is empty is kept as it is (``confirmed`` False): quality control already weighs such
masks. The outside-the-boxes term keeps the detector's boxes: a loose box there only
makes it more cautious. Boxes made from masks are tight already and are not tightened
(:func:`medistill.distill.meddistill.targets.tighten_projection_boxes`).

>>> import numpy as np
>>> masks = np.zeros((2, 8, 8), np.float32)
>>> masks[0, 2:4, 3:6] = 0.9                    # the object inside the first box
>>> tight, confirmed = tighten_boxes(np.array([[1, 1, 7, 7], [0, 0, 2, 2]], np.float32), masks)
>>> tight.tolist(), confirmed.tolist()
([[3.0, 2.0, 6.0, 4.0], [0.0, 0.0, 2.0, 2.0]], [True, False])
"""

from __future__ import annotations

import numpy as np

TIGHTEN_THRESHOLD = 0.5


def tighten_boxes(boxes: np.ndarray, masks: np.ndarray, threshold: float = TIGHTEN_THRESHOLD
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 4)`` xyxy boxes and their teacher masks ``(N, H, W)`` → tightened boxes, confirmed ``(N,)``.

    Boxes are in the masks' pixels (``x2``/``y2`` exclusive edges); the result never
    leaves the given box.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(masks) != len(boxes):
        raise ValueError(f"tighten_boxes: {len(boxes)} boxes but {len(masks)} masks")
    tight = boxes.copy()
    confirmed = np.zeros(len(boxes), bool)
    height, width = np.asarray(masks).shape[1:] if len(boxes) else (0, 0)
    centres_x = np.arange(width, dtype=np.float32) + 0.5
    centres_y = np.arange(height, dtype=np.float32) + 0.5
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        in_x = (centres_x >= x1) & (centres_x < x2)
        in_y = (centres_y >= y1) & (centres_y < y2)
        found = (np.asarray(masks[i]) > threshold) & in_y[:, None] & in_x[None, :]
        if not found.any():
            continue
        cols = np.flatnonzero(found.any(axis=0))
        rows = np.flatnonzero(found.any(axis=1))
        tight[i] = (max(x1, cols[0]), max(y1, rows[0]), min(x2, cols[-1] + 1), min(y2, rows[-1] + 1))
        confirmed[i] = True
    return tight, confirmed
