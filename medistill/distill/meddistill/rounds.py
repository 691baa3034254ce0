"""Refinement rounds: the student's masks become the teacher's next prompts (``--rounds K``).

(Over 400 lines on purpose: about 70 of them are this docstring, the rules of the rounds,
kept beside the code that implements them; the files of a round are in
:mod:`.round_files`, the selection and export in :mod:`.round_selection`.)

Round 1 distils from the detector's boxes. After round ``k``, the round-``k`` student
predicts every image of the boxes file (training and held-out images alike, at the
original resolution, with :func:`medistill.export.load_predictor`); its components become
box prompts merged with the detector's boxes (:mod:`.prompts`), the teacher runs again on
them into a new cache, and round ``k + 1`` distils from the refined targets, starting from
round ``k``'s student (``init_from``). The detector's boxes stay the anchor: every round's
prompts are merged from the newest student and the detector's original boxes, never from
the previous round's merged boxes. ``docs/refinement_rounds.md`` says all this for users.

Layout of ``OUT``::

    OUT/config.json, .medistill-run.json   the whole command (rounds = K; kind MedDistillRounds)
    OUT/rounds/<k>/boxes.json               round k's prompts (round 1: the detector's file, copied)
    OUT/rounds/<k>/teacher_cache.h5         the teacher on those prompts (round 1: --cache if given)
    OUT/rounds/<k>/run/                     round k's MedDistill run folder (student.keras, ...)
    OUT/rounds/<k>/heldout_masks.npz        round k's student masks of the held-out images
    OUT/rounds/<k>/round.json               written last: the round is finished
    OUT/rounds.csv, OUT/rounds.log          one row per round; the log of the rounds
    OUT/student.keras, saved_model/, preprocessing.json, summary.json, history.csv, curves.png
                                            the selected round's student (predict_eval.py --model_path OUT)

**Resuming.** Each step is kept on disk as it finishes: the boxes file (atomic), the teacher
cache (per image), the run (per epoch, by the trainer), the held-out masks and the next
round's boxes, then ``round.json``. Rerunning the same command skips finished rounds
(those with ``round.json``) and resumes the unfinished one where it stopped (a kill during
the student's pass over the images repeats that pass, inference only). Raising
``--rounds`` later continues after the last round unless the stopping rule had ended them.

**Negatives.** The next round's boxes file lists in ``source["confirmed_negatives"]`` the
images that have no box in the merged prompts although the student was asked: no detector
box, no student box, and nothing the student was unsure of (every component it saw, if
any, had been rejected by the teacher). The trainer trusts those as negatives at full
weight; other images without a box stay ambiguous and keep a lower weight. When the
detector's file was made from ground-truth masks (``source.kind == "masks"``), its boxes
list every object: the student adds no box, and every image without one is a confirmed
negative.

**Label-free score, stopping and selection.** A round's score is the agreement Dice, at
the original resolution, between its student's mask and its teacher's fused mask on the
held-out images (the trainer's split, the same in every round), averaged over the
held-out images where either finds something (1.0 when none does). After round ``k ≥ 2``
the rounds stop when

* the score gained less than ``StopRule.margin`` (0.01) over round ``k − 1``, or
* the students of rounds ``k − 1`` and ``k`` agree on the held-out images (mean Dice over
  the images where either finds something) at least ``StopRule.converged`` (0.98): the
  next prompts would hardly move;

and after any round when its student gives exactly the prompts of the round it was trained
on (the next round would repeat it), when its student collapsed (the trainer's check in
``summary.json``), or when ``--rounds`` is reached. The exported round is the one with
the highest score (the earlier one on a tie), among the rounds whose student did not
collapse when there is one. For judging these rules,
``rounds.csv`` also lists each round's ``val_dice`` (the trainer's own best agreement, in
the student frame) and ``agreement_first_teacher``, the held-out agreement measured
against round 1's teacher (the detector's prompts) instead of the round's own: a fixed
reference that does not move with the prompts.

Example::

    config = MedDistillConfig(image_dir="data/images", boxes="boxes.json", out="runs/r3",
                              teacher="litemedsam", rounds=3)
    run_rounds(config)     # runs/r3/student.keras is the selected round's student
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medistill.boxes.boxes_file import Box, BoxesFile, ImageBoxes, read_boxes, write_boxes
from medistill.distill.meddistill import data as md
from medistill.distill.meddistill.config import MedDistillConfig
from medistill.teachers.cache import CacheReader
from medistill.distill.meddistill.round_files import (  # noqa: F401  (public here too)
    LOG_NAME,
    ROUNDS_DIR,
    SOURCE_KIND,
    RoundPaths,
    StopRule,
    read_json,
    round_config,
    round_paths,
)
from medistill.distill.meddistill.round_selection import (  # noqa: F401  (public here too)
    export_selected,
    rounds_table,
    select_round,
    write_rounds_csv,
)
from medistill.distill.meddistill.prompts import (
    PromptRule,
    is_confirmed_negative,
    merge_prompts,
    student_boxes,
    teacher_rejects,
)
from medistill.errors import MedistillError
from medistill.fileio import atomic_path, file_sha256, write_json_atomic

log = logging.getLogger("medistill.distill")

# --------------------------------------------------------------------------- predicting


def predict_images(run_dir: str | Path, image_dir: str | Path, entries: Sequence[ImageBoxes],
                   batch: int = 8) -> Iterator[tuple[ImageBoxes, np.ndarray]]:
    """``(entry, probability (H, W))`` for every entry, predicted by ``run_dir``'s student.

    The run's recorded preprocessing is applied and the map is restored to the image's
    original resolution (:class:`medistill.export.Predictor`), ``batch`` images at a time.
    """
    from medistill.data.preprocess import preprocess_image
    from medistill.export import load_predictor

    predictor = load_predictor(run_dir)
    for start in range(0, len(entries), batch):
        chunk = list(entries[start:start + batch])
        prepared = [preprocess_image(md.read_entry_image(e, image_dir), predictor.card.preprocess) for e in chunk]
        probs = predictor.predict_batch([x for x, _ in prepared], [g for _, g in prepared])
        for entry, prob in zip(chunk, probs):
            yield entry, np.asarray(prob, np.float32)


def agreement(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of two binary masks; None when both are empty (the image says nothing)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def mean_agreement(values: Sequence[float | None]) -> float:
    """Mean over the informative images (not None); 1.0 when there is none."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else 1.0


def _save_masks(path: Path, masks: dict[str, np.ndarray]) -> None:
    stems = sorted(masks)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, stems=np.array(stems, dtype=str),
                                **{f"m{i}": masks[s].astype(bool) for i, s in enumerate(stems)})


def load_masks(path: str | Path) -> dict[str, np.ndarray]:
    """The held-out masks a round saved: ``{stem: (H, W) bool}``."""
    with np.load(path) as data:
        return {str(s): data[f"m{i}"] for i, s in enumerate(data["stems"])}


# --------------------------------------------------------------------------- the next prompts


def _prompt_key(boxes: BoxesFile) -> tuple:
    """What the teacher sees of a boxes file (and which images are trusted negatives)."""
    images = tuple((e.stem, tuple((tuple(b.xyxy), b.class_id) for b in e.boxes)) for e in boxes.images)
    return images, tuple(sorted(boxes.source.get("confirmed_negatives", [])))


def _prompt_stats(boxes: BoxesFile) -> dict[str, Any]:
    """A round's own prompts: the statistics its boxes file recorded (round 1: the detector's)."""
    if boxes.source.get("kind") == SOURCE_KIND:
        return dict(boxes.source.get("stats", {}))
    empty = sum(1 for e in boxes.images if not e.boxes)
    return {"boxes": boxes.num_boxes, "replaced": 0, "kept": boxes.num_boxes, "added": 0, "teacher_rejected": 0,
            "images_gaining": 0, "images_losing": 0, "confirmed_negatives": 0, "ambiguous_negatives": empty}


@dataclass
class StudentPass:
    """What one pass of round ``k``'s student over all images gives."""

    next_boxes: BoxesFile
    score: float
    agreement_previous: float | None
    heldout: int
    agreement_first_teacher: float  # diagnostic: with round 1's (detector-prompted) teacher


def student_pass(config: MedDistillConfig, paths: RoundPaths, detector: BoxesFile, current: BoxesFile,
                 heldout: set[str], rule: PromptRule) -> StudentPass:
    """Predict every image with round ``k``'s student; build round ``k + 1``'s boxes file.

    Also scores the round (held-out agreement with its teacher) and saves the held-out
    masks; ``current`` is round ``k``'s boxes file, ``detector`` the detector's.
    """
    k = paths.number
    cache_path = round_config(config, paths).cache_path()
    previous_masks = load_masks(round_paths(config.out, k - 1).heldout) if k > 1 else {}
    ours = current.source.get("kind") == SOURCE_KIND  # round 1's boxes are the detector's
    added_now = current.source.get("added", {}) if ours else {}
    rejected = {stem: [list(map(float, xyxy)) for xyxy in boxes]  # carried over: never proposed again
                for stem, boxes in (current.source.get("rejected", {}) if ours else {}).items()}
    by_stem = detector.by_stem()
    exhaustive = detector.source.get("kind") == "masks"  # boxes from ground-truth masks list every object
    stats: Counter = Counter()
    entries, added, confirmed = [], {}, []
    teacher_scores, student_scores, first_scores, masks = [], [], [], {}
    first_cache = round_config(config, round_paths(config.out, 1)).cache_path()
    with CacheReader(cache_path) as cache, CacheReader(first_cache) as first:
        finished = set(cache.stems)
        bar = tqdm(total=len(current.images), desc=f"round {k} student -> prompts", unit="image")
        for entry, prob in predict_images(paths.run, config.image_dir, current.images, config.batch):
            if prob.shape[:2] != (entry.height, entry.width):
                raise MedistillError(f"{paths.run}: the student's map of {entry.stem!r} is {prob.shape[:2]}, "
                                     f"the image {entry.height}x{entry.width}; the run folder is damaged "
                                     "(delete it and rerun)")
            if entry.stem not in finished:
                raise MedistillError(f"{cache_path}: no entry for image {entry.stem!r}; the cache is not round "
                                     f"{k}'s (delete it and rerun to rebuild it)")
            for index in added_now.get(entry.stem, []):  # the teacher's verdict on the student's added boxes
                if teacher_rejects(cache.masks(entry.stem, index)[None], entry.height, entry.width, rule)[0]:
                    rejected.setdefault(entry.stem, []).append(list(entry.boxes[index].xyxy))
                    stats["teacher_rejected"] += 1
            original = by_stem.get(entry.stem)
            if original is None:
                raise MedistillError(f"{config.boxes}: image {entry.stem!r} of round {k}'s boxes is missing from "
                                     "the detector's boxes file; it changed since the rounds began (use another "
                                     "--out, or --overwrite)")
            merged = merge_prompts(original.boxes, student_boxes(prob, rule), entry.width, entry.height, rule,
                                   [Box(*xyxy) for xyxy in rejected.get(entry.stem, [])], add=not exhaustive)
            for origin in ("replaced", "kept", "added"):
                stats[origin] += merged.count(origin)
            for reason, count in merged.skipped.items():
                stats[f"skipped_{reason}"] += count
            if merged.added:
                added[entry.stem] = merged.added
            if not merged.boxes:
                if is_confirmed_negative(original.boxes, merged) or (exhaustive and not original.boxes):
                    confirmed.append(entry.stem)
                else:
                    stats["ambiguous_negatives"] += 1
            stats["images_gaining"] += int(not entry.boxes and bool(merged.boxes))
            stats["images_losing"] += int(bool(entry.boxes) and not merged.boxes)
            entries.append(dataclasses.replace(entry, boxes=merged.boxes))
            if entry.stem in heldout:
                mask = prob > 0.5
                teacher_scores.append(agreement(mask, cache.entry(entry.stem, features=False).fused > 0.5))
                first_scores.append(agreement(mask, first.entry(entry.stem, features=False).fused > 0.5))
                if entry.stem in previous_masks:
                    student_scores.append(agreement(mask, previous_masks[entry.stem]))
                masks[entry.stem] = mask
            bar.update(1)
        bar.close()
    _save_masks(paths.heldout, masks)
    summary = {"boxes": sum(len(e.boxes) for e in entries), "replaced": stats["replaced"], "kept": stats["kept"],
               "added": stats["added"], "teacher_rejected": stats["teacher_rejected"],
               "images_gaining": stats["images_gaining"], "images_losing": stats["images_losing"],
               "confirmed_negatives": len(confirmed), "ambiguous_negatives": stats["ambiguous_negatives"],
               "skipped_inside": stats["skipped_inside"], "skipped_rejected": stats["skipped_rejected"],
               "skipped_unconfident": stats["skipped_unconfident"], "skipped_not_allowed": stats["skipped_not_allowed"]}
    source = {"kind": SOURCE_KIND, "round": k, "student": str(paths.run), "detector_boxes": str(config.boxes),
              "detector_sha256": file_sha256(config.boxes), "detector_kind": detector.source.get("kind"),
              "rule": rule.to_dict(), "student_adds_boxes": not exhaustive,
              "confirmed_negatives": sorted(confirmed), "added": added,
              "rejected": {stem: boxes for stem, boxes in sorted(rejected.items()) if boxes}, "stats": summary}
    next_boxes = BoxesFile(class_names=list(detector.class_names), images=entries, source=source)
    return StudentPass(next_boxes, mean_agreement(teacher_scores),
                       mean_agreement(student_scores) if k > 1 else None, len(masks), mean_agreement(first_scores))


def stop_reasons(score: float, previous: dict | None, agreement_previous: float | None, unchanged: bool,
                 stop: StopRule, collapse: dict | None = None) -> list[str]:
    """The label-free reasons to end the rounds after this one (empty: go on).

    ``collapse`` is the run's ``summary.json`` record of that name (the trainer's
    collapsed-student check); a collapsed student ends the rounds.
    """
    reasons = []
    if collapse and collapse.get("collapsed"):
        reasons.append(f"collapsed: {collapse.get('reason', 'the student predicts (almost) nothing')}")
    if previous is not None and score - float(previous["score"]) < stop.margin:
        reasons.append(f"no gain: held-out agreement {score:.4f} after {float(previous['score']):.4f} "
                       f"(less than +{stop.margin})")
    if agreement_previous is not None and agreement_previous >= stop.converged:
        reasons.append(f"converged: this student and the previous one agree {agreement_previous:.4f} "
                       f">= {stop.converged} on the held-out images")
    if unchanged:
        reasons.append("prompts unchanged: the next round would repeat this one")
    return reasons


# --------------------------------------------------------------------------- one round


class _Teacher:
    """The teacher, built once and only when a cache needs it."""

    def __init__(self, spec: str, runtime: Any) -> None:
        self.spec, self.runtime, self._teacher = spec, runtime, None

    def get(self):
        if self._teacher is None:
            from medistill.teachers.registry import build_teacher

            self._teacher = build_teacher(self.spec, self.runtime)
        return self._teacher


def _first_boxes(config: MedDistillConfig, paths: RoundPaths) -> None:
    """Round 1's boxes file: the detector's, copied byte for byte (its cache stays valid)."""
    wanted = file_sha256(config.boxes)
    if paths.boxes.exists():
        if file_sha256(paths.boxes) != wanted:
            raise MedistillError(f"{config.boxes} changed since round 1 copied it to {paths.boxes}; the rounds "
                                 "in --out were made from other boxes: use another --out, or --overwrite")
        return
    with atomic_path(paths.boxes) as tmp:
        shutil.copyfile(config.boxes, tmp)


def _run_round(config: MedDistillConfig, paths: RoundPaths, detector: BoxesFile, heldout: set[str],
               previous: dict | None, teacher: _Teacher, rule: PromptRule, stop: StopRule) -> dict:
    from medistill.distill.meddistill.trainer import train_meddistill
    from medistill.teachers.cache import build_cache

    started = time.perf_counter()
    k = paths.number
    if k == 1:
        _first_boxes(config, paths)
    elif not paths.boxes.exists():
        raise MedistillError(f"{paths.boxes} is missing although round {k - 1} went on to round {k}; delete "
                             f"{round_paths(config.out, k - 1).record} and rerun to rebuild it")
    current = read_boxes(paths.boxes)
    one = round_config(config, paths)
    log.info("round %d/%d: %d box(es) on %d image(s) (%s)", k, config.rounds, current.num_boxes,
             len(current.images), current.source.get("kind", "detector"))
    if not config.live_teacher:
        cache = build_cache(teacher.get(), config.image_dir, paths.boxes, one.cache_path(),
                            storage=config.cache_storage())
        log.info("round %d teacher cache %s: %s", k, one.cache_path(), cache)
    run_dir = Path(train_meddistill(one))
    found = student_pass(config, paths, detector, current, heldout, rule)
    summary = read_json(run_dir / "summary.json")
    collapse = summary.get("collapse") if isinstance(summary.get("collapse"), dict) else None
    unchanged = _prompt_key(found.next_boxes) == _prompt_key(current)
    reasons = stop_reasons(found.score, previous, found.agreement_previous, unchanged, stop, collapse)
    stats = found.next_boxes.source["stats"]
    with_previous = ("" if found.agreement_previous is None
                     else f", with round {k - 1}'s student {found.agreement_previous:.4f}")
    log.info("round %d: held-out agreement with its teacher %.4f%s; next prompts: %d box(es) (%d replaced, "
             "%d kept, %d added, %d teacher-rejected), %d image(s) gaining and %d losing boxes", k, found.score,
             with_previous,
             stats["boxes"], stats["replaced"], stats["kept"], stats["added"], stats["teacher_rejected"],
             stats["images_gaining"], stats["images_losing"])
    log.info("round %d negatives rule: of the images without a box in the next prompts, %d confirmed negatives "
             "(no detector box, no student box, nothing unsure; trusted at full weight) and %d ambiguous (the "
             "student sees something it is unsure of; left to the trainer's lower weight)", k,
             stats["confirmed_negatives"], stats["ambiguous_negatives"])
    next_path = None
    if reasons:
        log.info("round %d: the rounds stop (%s)", k, "; ".join(reasons))
    else:
        next_path = round_paths(config.out, k + 1).boxes
        write_boxes(next_path, found.next_boxes)
    record = {"round": k, "collapsed": bool(collapse and collapse.get("collapsed")), "run": str(run_dir), "boxes": str(paths.boxes), "cache": str(one.cache_path()),
              "score": round(found.score, 6), "val_dice": summary.get("best_val_dice"),
              "agreement_previous": None if found.agreement_previous is None else round(found.agreement_previous, 6),
              "agreement_first_teacher": round(found.agreement_first_teacher, 6),
              "heldout_images": found.heldout, "prompts": _prompt_stats(current), "next_prompts": stats,
              "stop": bool(reasons), "reasons": reasons, "next_boxes": None if next_path is None else str(next_path),
              "seconds": round(time.perf_counter() - started, 3)}
    write_json_atomic(paths.record, record)
    return record


def _finished(paths: RoundPaths) -> dict | None:
    return read_json(paths.record) if paths.record.exists() else None


# --------------------------------------------------------------------------- the command


def _check(config: MedDistillConfig) -> None:
    from medistill.distribute import worker_count

    if config.live_teacher:
        raise MedistillError("--rounds needs the teacher cache (each round reads its teacher's masks); "
                             "drop --live-teacher")
    if config.val_fraction <= 0:
        raise MedistillError("--rounds needs held-out images for its label-free stopping and selection rules; "
                             "set --val-fraction above 0 (e.g. 0.2)")
    if worker_count() > 1:
        raise MedistillError("--rounds runs on one machine (it predicts and rebuilds the teacher cache between "
                             "rounds); unset TF_CONFIG and use the GPUs of one machine")


def _check_previous(config: MedDistillConfig) -> None:
    """Refuse rounds in ``OUT`` that were made with other settings (``--rounds`` itself may change)."""
    out = Path(config.out)
    saved = out / "config.json"
    if config.overwrite or not saved.is_file() or not (out / ROUNDS_DIR).is_dir():
        return
    try:
        previous = MedDistillConfig.load(saved)
    except MedistillError:
        return  # not ours: the run-folder check names the problem
    changed = [name for name in config.differences(previous) if name != "rounds"]
    if changed:
        raise MedistillError(f"{out} holds refinement rounds made with other settings ({', '.join(changed)} "
                             "differ). Use another --out folder, or --overwrite to replace them.")


class MedDistillRounds:
    """The kind of run folder a rounds run is (the ``kind`` of its ``.medistill-run.json``).

    A distinct kind makes :func:`medistill.train.run_folder.check_run_folder` refuse a
    single MedDistill run (or any other command) in a folder that holds rounds, and the
    rounds in a folder that holds another run.
    """


def _prepare_out(config: MedDistillConfig) -> Path:
    """Check, lock and (with ``--overwrite``) empty ``OUT``; write its marker and ``config.json``.

    Returns the lock file (release it with :func:`medistill.locking.release_lock`).
    """
    from medistill.locking import LOCK_NAME, acquire_lock, release_lock
    from medistill.train.run_folder import MARKER_NAME, check_run_folder

    out = Path(config.out)
    check_run_folder(out, MedDistillRounds, config.overwrite)
    lock = acquire_lock(out / LOCK_NAME, what=f"run folder {out}")
    try:
        check_run_folder(out, MedDistillRounds, config.overwrite)  # again, now that it is ours
        if config.overwrite:
            log.info("--overwrite: deleting the earlier rounds in %s", out)
            for entry in out.iterdir():
                if entry.name == LOCK_NAME:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        else:
            _check_previous(config)
            if round_paths(out, 1).boxes.exists():  # the detector's file must be the one the rounds began with
                _first_boxes(config, round_paths(out, 1))
        write_json_atomic(out / MARKER_NAME, {"medistill": "run", "kind": MedDistillRounds.__name__,
                                              "command": "meddistill.py --rounds (medistill meddistill --rounds)"})
        write_json_atomic(out / "config.json", config.to_dict())
    except BaseException:
        release_lock(lock)
        raise
    return lock


def run_rounds(config: MedDistillConfig, *, rule: PromptRule | None = None, stop: StopRule | None = None) -> Path:
    """Run (or resume) up to ``config.rounds`` refinement rounds in ``config.out``; return ``config.out``.

    ``rule`` (:class:`~medistill.distill.meddistill.prompts.PromptRule`) and ``stop``
    (:class:`StopRule`) default to the documented settings.
    """
    from medistill.locking import release_lock

    rule, stop = rule or PromptRule(), stop or StopRule()
    _check(config)
    detector = read_boxes(config.boxes)
    missing = sorted({e.file for e in detector.images if not (Path(config.image_dir) / e.file).is_file()})
    if missing:  # checked before OUT is touched: a failed start writes nothing
        raise MedistillError(f"{config.boxes}: {len(missing)} image(s) it lists are not in --image_dir "
                             f"{config.image_dir} (e.g. {', '.join(missing[:3])}); pass the --image_dir the boxes "
                             "were made from")
    _, val_entries = md.split_entries(detector, config.image_dir, config.val_fraction, config.seed)
    if not val_entries:
        raise MedistillError(f"{config.boxes}: --val-fraction {config.val_fraction} holds out no image; --rounds "
                             "needs held-out images (more images, or a larger --val-fraction)")
    heldout = {e.stem for e in val_entries}
    out = Path(config.out)
    lock = _prepare_out(config)
    handler = logging.FileHandler(out / LOG_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("medistill").addHandler(handler)
    teacher = _Teacher(config.teacher, config.runtime())  # the runtime config.json records
    records: list[dict] = []
    try:
        k = 1
        while True:
            paths = round_paths(out, k)
            record = _finished(paths)
            if record is None:
                record = _run_round(config, paths, detector, heldout, records[-1] if records else None,
                                    teacher, rule, stop)
            else:
                log.info("round %d: already finished (%s), not redone", k, paths.record)
            records.append(record)
            write_rounds_csv(out, records, config.rounds)
            if record["stop"] or k >= config.rounds:
                break
            k += 1
        export_selected(out, records, config.rounds, rule, stop)
    finally:
        logging.getLogger("medistill").removeHandler(handler)
        handler.close()
        release_lock(lock)
    return out
