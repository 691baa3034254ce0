"""Pseudo-label quality control: which teacher masks to trust, decided without ground truth.

Input: the per-mask quality records of a teacher cache (:mod:`medistill.teachers.quality`:
teacher score, stability under box jitter, fill ratio of the box, connected components,
area). Output: per mask a decision (``keep`` / ``down-weight`` / ``drop``, a weight in
[0, 1] and a readable reason) and per image a weight.

The rule (:class:`QualityRule`; the reasoning is in ``docs/pseudo_label_quality.md``):

* an empty mask (area 0) is dropped: the teacher found nothing inside a detector box;
* every other criterion maps its value to a weight that is 1 at or beyond a *keep*
  threshold, 0 at or beyond a *drop* threshold and linear in between:

  - ``stability`` (higher is better) and ``score`` (higher is better, skipped when the
    teacher gives none): drop ``= max(absolute drop, median - z_drop * scale)``,
    keep ``= max(absolute keep, median - z_keep * scale)``, where median and
    ``scale = max(1.4826 * MAD, min_scale)`` are taken over the non-empty masks of the
    whole cache, so a mask must be both acceptable in absolute terms and not a low
    outlier of its set;
  - ``fill`` (two-sided): too small a share of its box (a fragment) or too large (a
    mask that fills its box: a leak, or a box-shaped fallback), with the same
    absolute-and-relative thresholds on each side;
  - ``components``: one is expected; ``c`` components give weight ``1 / c``;

* a mask's weight is the smallest of its criteria's weights; its action is ``keep``
  (weight 1), ``drop`` (weight 0) or ``down-weight``; the reason names every criterion
  below 1, weakest first;
* an image's weight is the smallest weight of its masks (a dropped mask would otherwise
  teach "background" inside its box); an image without boxes has weight 1.

With fewer than ``min_masks_for_relative`` non-empty masks only the absolute thresholds
apply (a median of a handful of masks is no reference).

Example::

    decisions = decide_cache("runs/teacher.h5")
    write_decisions_csv("runs/quality_decisions.csv", decisions)
    contact_sheet("runs/quality_sheet.png", decisions, "runs/teacher.h5", image_dir="data/images")
    weights = decisions.image_weights()       # {stem: weight}
"""

from __future__ import annotations

import csv
import io
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medistill.errors import MedistillError
from medistill.fileio import atomic_path, write_text_atomic
from medistill.teachers.quality import MaskQuality

KEEP, DOWN, DROP = "keep", "down-weight", "drop"


@dataclass(frozen=True)
class QualityRule:
    """The thresholds of the quality-control rule (see the module docstring).

    Absolute thresholds hold in any data set; ``z_*`` are robust z-scores (median/MAD of
    the cache's non-empty masks), whose scale is at least ``min_scale`` so that a set of
    near-identical values does not turn tiny differences into outliers.
    """

    stability_drop: float = 0.5
    stability_keep: float = 0.8
    score_drop: float = 0.3
    score_keep: float = 0.6
    fill_low_drop: float = 0.1
    fill_low_keep: float = 0.25
    fill_high_drop: float = 0.99
    fill_high_keep: float = 0.95
    z_drop: float = 4.0
    z_keep: float = 2.0
    min_scale: float = 0.05
    min_masks_for_relative: int = 10

    def __post_init__(self) -> None:
        pairs = {"stability": (self.stability_drop, self.stability_keep), "score": (self.score_drop, self.score_keep),
                 "fill_low": (self.fill_low_drop, self.fill_low_keep),
                 "fill_high": (self.fill_high_keep, self.fill_high_drop), "z": (self.z_keep, self.z_drop)}
        for name, (low, high) in pairs.items():
            if not low < high:
                raise MedistillError(f"quality rule: {name} thresholds must be ordered ({low} < {high})")
        if self.min_scale <= 0:
            raise MedistillError(f"quality rule: min_scale must be > 0, got {self.min_scale}")


@dataclass(frozen=True)
class MaskDecision:
    """The decision on one teacher mask (box ``index`` of image ``stem``)."""

    stem: str
    index: int
    action: str
    weight: float
    reason: str
    quality: MaskQuality


@dataclass(frozen=True)
class ImageDecision:
    """The weight of one image: the smallest of its masks' weights (1 without boxes)."""

    stem: str
    weight: float
    n_boxes: int
    reason: str

    @property
    def action(self) -> str:
        return _action(self.weight)


@dataclass
class Decisions:
    """All decisions on a cache, with the thresholds actually used per criterion."""

    masks: list[MaskDecision]
    images: list[ImageDecision]
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    rule: QualityRule = field(default_factory=QualityRule)

    def image_weights(self) -> dict[str, float]:
        """``{stem: weight}`` for every image."""
        return {d.stem: d.weight for d in self.images}

    def mask_weights(self) -> dict[str, np.ndarray]:
        """``{stem: (N,) float32}`` the weight of each box of every image."""
        out = {d.stem: np.ones(d.n_boxes, np.float32) for d in self.images}
        for d in self.masks:
            out[d.stem][d.index] = d.weight
        return out

    def counts(self) -> dict[str, int]:
        """How many masks each action got."""
        return {action: sum(d.action == action for d in self.masks) for action in (KEEP, DOWN, DROP)}


def _action(weight: float) -> str:
    return KEEP if weight >= 1.0 else DROP if weight <= 0.0 else DOWN


def robust_centre(values: Sequence[float], min_scale: float) -> tuple[float, float]:
    """``(median, max(1.4826 · MAD, min_scale))`` of the finite values (NaN median when none).

    >>> robust_centre([0.9, 0.95, 1.0, 1.0, 0.2], 0.01)
    (0.95, 0.07413)
    """
    array = np.asarray([v for v in values if np.isfinite(v)], np.float64)
    if array.size == 0:
        return float("nan"), float(min_scale)
    median = float(np.median(array))
    mad = float(np.median(np.abs(array - median)))
    return median, round(max(1.4826 * mad, float(min_scale)), 10)


def ramp(value: float, drop: float, keep: float) -> float:
    """Weight 0 at ``drop``, 1 at ``keep``, linear between (either direction).

    >>> ramp(0.65, 0.5, 0.8), ramp(0.97, 0.99, 0.95), ramp(0.2, 0.5, 0.8)
    (0.5, 0.5, 0.0)
    """
    if keep == drop:
        return 1.0 if value >= keep else 0.0
    return float(np.clip((value - drop) / (keep - drop), 0.0, 1.0))


def _thresholds(records: Sequence[MaskQuality], rule: QualityRule) -> dict[str, dict[str, float]]:
    """The drop/keep thresholds of every criterion for this set of records."""
    solid = [r for r in records if r.area > 0]
    relative = len(solid) >= rule.min_masks_for_relative
    out: dict[str, dict[str, float]] = {}

    def lower_side(name: str, values: list[float], drop: float, keep: float) -> None:
        median, scale = robust_centre(values, rule.min_scale)
        use = relative and np.isfinite(median) and sum(np.isfinite(values)) >= rule.min_masks_for_relative
        out[name] = {"median": median, "scale": scale, "relative": float(use),
                     "drop": max(drop, median - rule.z_drop * scale) if use else drop,
                     "keep": max(keep, median - rule.z_keep * scale) if use else keep}

    lower_side("stability", [r.stability for r in solid], rule.stability_drop, rule.stability_keep)
    lower_side("score", [r.score for r in solid], rule.score_drop, rule.score_keep)
    lower_side("fill_low", [r.fill for r in solid], rule.fill_low_drop, rule.fill_low_keep)
    median, scale = out["fill_low"]["median"], out["fill_low"]["scale"]
    use = bool(out["fill_low"]["relative"])
    out["fill_high"] = {"median": median, "scale": scale, "relative": float(use),
                        "drop": min(rule.fill_high_drop, median + rule.z_drop * scale) if use else rule.fill_high_drop,
                        "keep": min(rule.fill_high_keep, median + rule.z_keep * scale) if use else rule.fill_high_keep}
    return out


def decide_mask(record: MaskQuality, thresholds: Mapping[str, Mapping[str, float]]) -> tuple[float, str]:
    """``(weight, reason)`` of one mask under resolved ``thresholds`` (see :func:`decide`)."""
    if record.area <= 0:
        return 0.0, "empty mask: the teacher found nothing in its box"
    parts: list[tuple[float, str]] = []
    t = thresholds["stability"]
    if np.isfinite(record.stability):
        w = ramp(record.stability, t["drop"], t["keep"])
        parts.append((w, f"unstable under box jitter: IoU {record.stability:.2f} "
                         f"(drop <= {t['drop']:.2f}, keep >= {t['keep']:.2f})"))
    t = thresholds["score"]
    if np.isfinite(record.score):
        w = ramp(record.score, t["drop"], t["keep"])
        parts.append((w, f"low teacher score {record.score:.2f} (drop <= {t['drop']:.2f}, keep >= {t['keep']:.2f})"))
    low, high = thresholds["fill_low"], thresholds["fill_high"]
    parts.append((ramp(record.fill, low["drop"], low["keep"]),
                  f"fills only {record.fill:.0%} of its box (drop <= {low['drop']:.0%}, keep >= {low['keep']:.0%})"))
    parts.append((ramp(record.fill, high["drop"], high["keep"]),
                  f"fills {record.fill:.0%} of its box, box-shaped or leaking "
                  f"(drop >= {high['drop']:.0%}, keep <= {high['keep']:.0%})"))
    if record.components > 1:
        parts.append((1.0 / record.components, f"{record.components} fragments"))
    weight = min(w for w, _ in parts)
    below = sorted((p for p in parts if p[0] < 1.0), key=lambda p: p[0])
    return float(weight), "; ".join(reason for _, reason in below) if below else "ok"


def decide(records: Mapping[str, Sequence[MaskQuality]], rule: QualityRule | None = None) -> Decisions:
    """Decisions for every mask and image of ``{stem: records}`` (see the module docstring)."""
    rule = rule or QualityRule()
    everything = [r for stem in records for r in records[stem]]
    thresholds = _thresholds(everything, rule)
    masks, images = [], []
    for stem in sorted(records):
        mine = []
        for index, record in enumerate(records[stem]):
            weight, reason = decide_mask(record, thresholds)
            mine.append(MaskDecision(stem, index, _action(weight), weight, reason, record))
        masks.extend(mine)
        if not mine:
            images.append(ImageDecision(stem, 1.0, 0, "no boxes"))
            continue
        worst = min(mine, key=lambda d: d.weight)
        reason = "all masks kept" if worst.weight >= 1.0 else f"box {worst.index}: {worst.reason}"
        images.append(ImageDecision(stem, worst.weight, len(mine), reason))
    return Decisions(masks, images, thresholds, rule)


def decide_cache(cache_path: str | os.PathLike, rule: QualityRule | None = None) -> Decisions:
    """:func:`decide` on every finished image of a teacher cache."""
    from medistill.teachers.cache import CacheReader

    with CacheReader(cache_path) as cache:
        return decide(cache.all_quality(), rule)


CSV_COLUMNS = ("level", "stem", "box", "action", "weight", "reason", "score", "stability", "fill",
               "components", "area")


def write_decisions_csv(path: str | os.PathLike, decisions: Decisions) -> Path:
    """Every decision as CSV (atomically): one ``image`` row per image, one ``mask`` row per box."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    by_stem: dict[str, list[MaskDecision]] = {}
    for d in decisions.masks:
        by_stem.setdefault(d.stem, []).append(d)
    for image in decisions.images:
        writer.writerow({"level": "image", "stem": image.stem, "box": "", "action": image.action,
                         "weight": f"{image.weight:.4f}", "reason": image.reason})
        for d in by_stem.get(image.stem, []):
            q = asdict(d.quality)
            writer.writerow({"level": "mask", "stem": d.stem, "box": d.index, "action": d.action,
                             "weight": f"{d.weight:.4f}", "reason": d.reason,
                             **{k: ("" if isinstance(v, float) and math.isnan(v) else
                                    f"{v:.4f}" if isinstance(v, float) else v) for k, v in q.items()}})
    write_text_atomic(path, buffer.getvalue())
    return Path(path)


def _load_image(image_dir: Path, file: str, slice_index: int | None) -> np.ndarray | None:
    from medistill.data.io import read_image, read_volume, volume_slice

    path = image_dir / file
    if not path.exists():
        return None
    image = volume_slice(read_volume(path), slice_index) if slice_index is not None else read_image(path)
    image = np.asarray(image, np.float32)
    return image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image


def _crop(box: np.ndarray, height: int, width: int, margin: float = 0.75, least: int = 32) -> tuple[slice, slice]:
    x1, y1, x2, y2 = (float(v) for v in box)
    half = max((x2 - x1), (y2 - y1)) * (0.5 + margin)
    half = max(half, least / 2)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    rows = slice(max(int(cy - half), 0), min(int(math.ceil(cy + half)), height))
    cols = slice(max(int(cx - half), 0), min(int(math.ceil(cx + half)), width))
    return rows, cols


def contact_sheet(path: str | os.PathLike, decisions: Decisions, cache_path: str | os.PathLike,
                  image_dir: str | os.PathLike | None = None, count: int = 16, columns: int = 4,
                  threshold: float = 0.5) -> Path:
    """A PNG grid of the ``count`` lowest-weighted masks over their images (atomically).

    Each tile is cropped around the box: the image in grey (the soft mask alone when
    ``image_dir`` is None or the image is gone), the mask ``> threshold`` in red, the
    box in yellow, and a title with the stem, box, weight, action and reason.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from medistill.teachers.cache import CacheReader

    worst = sorted(decisions.masks, key=lambda d: (d.weight, _nan_last(d.quality.stability),
                                                   d.stem, d.index))[:max(int(count), 0)]
    columns = max(1, min(int(columns), len(worst) or 1))
    rows = max(1, math.ceil(len(worst) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.9 * rows), squeeze=False)
    with CacheReader(cache_path) as cache:
        for ax in axes.flat:
            ax.axis("off")
        for ax, d in zip(axes.flat, worst):
            entry = cache.entry(d.stem, features=False)
            soft = cache.masks(d.stem, d.index)
            box = entry.boxes[d.index]
            image = _load_image(Path(image_dir), entry.file, entry.slice_index) if image_dir is not None else None
            rr, cc = _crop(box, entry.height, entry.width)
            background = soft if image is None else image
            ax.imshow(background[rr, cc], cmap="gray", interpolation="nearest",
                      extent=(cc.start, cc.stop, rr.stop, rr.start))
            hard = np.ma.masked_where(soft[rr, cc] <= threshold, np.ones_like(soft[rr, cc]))
            ax.imshow(hard, cmap="autumn", alpha=0.45, interpolation="nearest",
                      extent=(cc.start, cc.stop, rr.stop, rr.start))
            ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                   edgecolor="yellow", linewidth=1.2))
            parts = d.reason.split("; ")
            reason = parts[0] + (f" (+{len(parts) - 1} more)" if len(parts) > 1 else "")
            wrapped = "\n".join(textwrap.wrap(reason, 42)[:4])
            ax.set_title(f"{d.stem} #{d.index}: {d.action} w={d.weight:.2f}\n{wrapped}", fontsize=6.5)
    if not worst:
        axes.flat[0].text(0.5, 0.5, "no masks in the cache", ha="center", va="center")
    figure.suptitle(f"lowest-weighted teacher masks of {Path(cache_path).name} "
                    f"({decisions.counts()[DROP]} dropped, {decisions.counts()[DOWN]} down-weighted "
                    f"of {len(decisions.masks)})", fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return Path(path)


def _nan_last(value: float) -> float:
    return math.inf if not np.isfinite(value) else value


def summary(decisions: Decisions) -> dict[str, Any]:
    """Counts and thresholds, JSON-ready (for logs and run records)."""
    weights = [d.weight for d in decisions.images]
    return {"masks": len(decisions.masks), **decisions.counts(), "images": len(decisions.images),
            "images_below_1": sum(w < 1.0 for w in weights),
            "mean_image_weight": round(float(np.mean(weights)), 4) if weights else 1.0,
            "thresholds": {k: {n: round(float(v), 4) for n, v in t.items()}
                           for k, t in decisions.thresholds.items()}}
