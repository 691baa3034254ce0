"""Which round a rounds run exports, its ``rounds.csv``, and the export into ``OUT``.

The rules are described in :mod:`medistill.distill.meddistill.rounds`.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from medistill.distill.meddistill.prompts import PromptRule
from medistill.distill.meddistill.round_files import (
    CSV_COLUMNS,
    CSV_NAME,
    EXPORTED_FILES,
    SELECTION_RULE,
    StopRule,
    read_json,
    round_paths,
)
from medistill.errors import MedistillError
from medistill.fileio import atomic_path, write_json_atomic, write_text_atomic

log = logging.getLogger("medistill.distill")

def select_round(records: Sequence[dict]) -> dict:
    """The record of the exported round: highest ``score``, the earlier round on a tie.

    A round whose student collapsed is chosen only when every round's did.
    """
    if not records:
        raise MedistillError("no finished round to select")
    return max(records, key=lambda r: (not r.get("collapsed", False), float(r["score"]), -int(r["round"])))


def _decision(record: dict, last: bool, limit: int) -> str:
    if record["stop"]:
        return "stop: " + "; ".join(record["reasons"])
    if last and record["round"] >= limit:
        return f"stop: --rounds {limit} reached"
    return "continue"


def rounds_table(records: Sequence[dict], limit: int) -> list[dict]:
    """One row per round (the columns of ``rounds.csv``)."""
    selected = select_round(records)["round"] if records else None
    rows = []
    for i, record in enumerate(records):
        prompts = record["prompts"]
        row = {name: prompts.get(name, 0) for name in CSV_COLUMNS[1:10]}
        row.update(round=record["round"], score=record["score"], val_dice=record["val_dice"],
                   agreement_previous=record["agreement_previous"],
                   agreement_first_teacher=record.get("agreement_first_teacher"),
                   decision=_decision(record, i == len(records) - 1, limit),
                   selected=record["round"] == selected)
        rows.append(row)
    return rows


def write_rounds_csv(out: Path, records: Sequence[dict], limit: int) -> None:
    """``OUT/rounds.csv``: :func:`rounds_table` as CSV, written atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rounds_table(records, limit):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    write_text_atomic(out / CSV_NAME, text.getvalue())


def export_selected(out: str | Path, records: Sequence[dict], limit: int, rule: PromptRule, stop: StopRule) -> dict:
    """Copy the selected round's student into ``out`` (each file atomically); return ``out/summary.json``."""
    out = Path(out)
    chosen = select_round(records)
    run_dir = round_paths(out, chosen["round"]).run  # not the recorded path: OUT may have moved
    for required in ("student.keras", "preprocessing.json", "summary.json"):
        if not (run_dir / required).is_file():
            raise MedistillError(f"{run_dir / required} is missing: round {chosen['round']}'s run did not export; "
                                 f"delete {round_paths(out, chosen['round']).record} and rerun to redo that round")
    for name in EXPORTED_FILES:
        if (run_dir / name).is_file():
            with atomic_path(out / name) as tmp:
                shutil.copyfile(run_dir / name, tmp)
        elif (out / name).exists():
            (out / name).unlink()
    if (run_dir / "saved_model").is_dir():
        with atomic_path(out / "saved_model", suffix="") as tmp:
            shutil.copytree(run_dir / "saved_model", tmp)
    elif (out / "saved_model").is_dir():
        shutil.rmtree(out / "saved_model")
    table = rounds_table(records, limit)
    summary = read_json(run_dir / "summary.json")
    summary["rounds"] = {
        "selected": chosen["round"], "selected_run": str(run_dir), "selection_rule": SELECTION_RULE,
        "rounds_run": len(records), "rounds_allowed": limit, "stopped": table[-1]["decision"],
        "stop_rule": stop.to_dict(), "prompt_rule": rule.to_dict(),
        "per_round": [{k: row[k] for k in ("round", "score", "val_dice", "agreement_previous",
                                           "agreement_first_teacher", "boxes", "added", "replaced",
                                           "confirmed_negatives", "decision", "selected")}
                      for row in table],
    }
    write_json_atomic(out / "summary.json", summary)
    log.info("rounds: exported round %d's student to %s (%s)", chosen["round"], out, table[-1]["decision"])
    return summary
