"""How much each training image is trusted: the negatives rule and pseudo-label quality.

Every training example carries a weight in [0, 1] that multiplies all its loss terms
(docs/label_free_losses.md, "Trust"):

- **Images without a box** (``--negatives``): ``all`` trusts every one as a negative
  (the behaviour before this rule), ``none`` gives them weight 0, ``auto`` (default)
  trusts them fully only with evidence that they are empty: boxes made from masks
  (``source.kind == "masks"``), or images listed in the boxes file's
  ``source["confirmed_negatives"]`` (a refinement round found nothing there either,
  docs/refinement_rounds.md). Other images without a box may be detector misses, whose
  all-background target would teach the student to miss the same lesions; they count
  :data:`UNCONFIRMED_NEGATIVE` (half).
- **Pseudo-label quality** (``--quality-control``): the image weight from the teacher
  cache's quality records (docs/pseudo_label_quality.md, :func:`quality_weights`),
  multiplied in.

Example:
    >>> import numpy as np
    >>> negative_weights(np.array([2, 0, 0]), ["a", "b", "c"], "auto", {"kind": "detector",
    ...                  "confirmed_negatives": ["c"]})[0].tolist()
    [1.0, 0.5, 1.0]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("medistill.distill")

UNCONFIRMED_NEGATIVE = 0.5
LOW_TRUST = 0.2  # below this mean weight the run warns that little is left to learn from


def negative_weights(n_boxes: np.ndarray, stems: Sequence[str], rule: str,
                     source: dict[str, Any]) -> tuple[np.ndarray, dict[str, int]]:
    """``(N,)`` float32 weights from the negatives rule, and how many images each case took."""
    n_boxes = np.asarray(n_boxes)
    weights = np.ones(len(n_boxes), np.float32)
    empty = n_boxes == 0
    confirmed = set(source.get("confirmed_negatives") or [])
    from_masks = source.get("kind") == "masks"
    counts = {"with_boxes": int((~empty).sum()), "trusted_negatives": 0, "down_weighted_negatives": 0,
              "left_out_negatives": 0}
    for i in np.flatnonzero(empty):
        if rule == "all" or (rule == "auto" and (from_masks or stems[i] in confirmed)):
            counts["trusted_negatives"] += 1
        elif rule == "none":
            weights[i] = 0.0
            counts["left_out_negatives"] += 1
        else:
            weights[i] = UNCONFIRMED_NEGATIVE
            counts["down_weighted_negatives"] += 1
    return weights, counts


def assign_trust(data: Any, rule: str, source: dict[str, Any],
                 quality: np.ndarray | None = None) -> dict[str, Any]:
    """Set ``data.weights`` from the negatives rule (and quality weights); return a record for the summary."""
    weights, counts = negative_weights(data.n_boxes, data.stems, rule, source)
    if quality is not None:
        weights = weights * np.asarray(quality, np.float32)
    data.weights = weights.astype(np.float32)
    log.info("images without a box (--negatives %s): %d trusted as negatives, %d down-weighted to %.2f, "
             "%d left out; %d image(s) with boxes", rule, counts["trusted_negatives"],
             counts["down_weighted_negatives"], UNCONFIRMED_NEGATIVE, counts["left_out_negatives"],
             counts["with_boxes"])
    if len(weights) and weights.mean() < LOW_TRUST:
        log.warning("the training images' mean trust is %.2f: quality control and the negatives rule leave the "
                    "student almost nothing to learn from. Look at quality_sheet.png (is the teacher failing on "
                    "these images or boxes?), or rerun with --no-quality-control / --negatives all",
                    float(weights.mean()))
    return {"negatives_rule": rule, **counts, "mean_weight": round(float(weights.mean()), 4) if len(weights) else None}


def quality_weights(cache_path: str | os.PathLike, stems: Sequence[str], image_dir: str | os.PathLike,
                    report_dir: Path | None) -> tuple[np.ndarray, dict[str, Any]]:
    """``(N,)`` image weights of ``stems`` from the cache's quality records, and a summary.

    With ``report_dir`` (the chief's run folder) every decision goes to
    ``quality_decisions.csv`` and the lowest-weighted masks to ``quality_sheet.png``.
    """
    from medistill.distill.meddistill.quality_control import (
        contact_sheet,
        decide_cache,
        summary,
        write_decisions_csv,
    )

    decisions = decide_cache(cache_path)
    by_stem = decisions.image_weights()
    weights = np.array([by_stem.get(stem, 1.0) for stem in stems], np.float32)
    record = summary(decisions)
    if report_dir is not None:
        write_decisions_csv(report_dir / "quality_decisions.csv", decisions)
        contact_sheet(report_dir / "quality_sheet.png", decisions, cache_path, image_dir=image_dir)
    log.info("pseudo-label quality control: %d of %d teacher masks kept, %d down-weighted, %d dropped; "
             "%d training image(s) weigh less than 1 (quality_decisions.csv, quality_sheet.png)",
             record["keep"], record["masks"], record["down-weight"], record["drop"], int((weights < 1).sum()))
    return weights, record
