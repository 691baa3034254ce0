"""Running ``medistill teach``: the teacher-runtime options, one process, or ``--workers K``.

:func:`add_runtime_arguments` / :func:`use_runtime_from_args` give every command that runs
a teacher the same ``--teacher-backend`` … options, parsed once per process.
:func:`teach_one` builds a cache (or one shard) here; :func:`teach_with_workers` runs K
processes on this machine, one shard each, then one merge.

Each worker is a fresh (spawned) process that builds the teacher and writes its shard
cache ``<stem>.shard-I-of-K.h5`` exactly as ``--shard I/K`` would (so a killed run
resumes shard by shard), with ``cores / K`` inference threads unless
``--teacher-threads`` says otherwise. The parent shows one progress bar for the whole
set (images/s and ETA), exports the teacher once before the workers start (so they do
not all export it), and merges the shards when every worker has finished.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import time
from typing import Any

from medistill.errors import MedistillError
from medistill.runtimes import PRECISIONS


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--teacher-backend``, ``--teacher-precision``, ``--teacher-batch``, ``--teacher-threads``
    (every command that runs a teacher; read with :func:`use_runtime_from_args`)."""
    group = parser.add_argument_group("where the teacher runs (litemedsam)")
    group.add_argument("--teacher-backend", default="auto", choices=("auto", "keras", "onnxruntime", "openvino"),
                       help="keras (TensorFlow), onnxruntime or openvino (LiteMedSAM exported once next to its "
                       "converted weights, then reused); auto: openvino (keras where OpenVINO is not installed), "
                       "the fastest with the same masks on this project's machines (README, Teacher backends)")
    group.add_argument("--teacher-precision", default="fp32", choices=PRECISIONS,
                       help="bf16 only with --teacher-backend openvino (masks within the documented tolerance)")
    group.add_argument("--teacher-batch", type=int,
                       help="images per encoder call (default: the backend's, 1 where batching was not faster)")
    group.add_argument("--teacher-threads", type=int,
                       help="threads of ONNX Runtime / OpenVINO (default: every core)")
    group.add_argument("--teacher-resize", default="area", choices=("area", "bilinear"),
                       help="how an image's longest side is brought to 256: area is LiteMedSAM's official "
                       "preprocessing (its weights were trained so); bilinear matches pipelines that upscale "
                       "bilinearly (small images give different masks). A teacher cache records it and refuses "
                       "the other")


def runtime_from_args(args: argparse.Namespace):
    """The :class:`~medistill.teachers.registry.TeacherRuntime` the options describe."""
    from medistill.teachers.registry import TeacherRuntime

    return TeacherRuntime(backend=args.teacher_backend, precision=args.teacher_precision,
                          encode_batch=args.teacher_batch, threads=args.teacher_threads,
                          resize=args.teacher_resize)


def use_runtime_from_args(args: argparse.Namespace):
    """Parse the teacher-runtime options once and make them the process's (``build_teacher`` uses them)."""
    from medistill.teachers.registry import use_runtime

    runtime = runtime_from_args(args)
    use_runtime(runtime)
    return runtime


def teach_one(args: argparse.Namespace, shard=None, on_progress=None) -> dict:
    """Build the cache (or the shard cache of ``shard``) named by ``args`` in this process; its summary."""
    from medistill.teachers.cache import build_cache
    from medistill.teachers.quality import QualitySettings
    from medistill.teachers.registry import build_teacher
    from medistill.teachers.shards import shard_path

    settings = QualitySettings(jitter=args.jitter, draws=args.jitter_draws)
    use_runtime_from_args(args)
    teacher = build_teacher(args.teacher)
    out = shard_path(args.out, shard) if shard else args.out
    summary = build_cache(teacher, args.image_dir, args.boxes, out, overwrite=args.overwrite,
                          progress=not args.no_progress and on_progress is None, quality=settings,
                          shard=shard, on_progress=on_progress, storage=args.cache_features)
    return {**summary, "backend": teacher.backend, **({"shard": shard.text, "shard_cache": str(out)} if shard else {})}


def _worker(args: argparse.Namespace, index: int, count: int, messages: Any) -> None:
    # Before TensorFlow loads: a Keras teacher in each of K processes gets its share of the cores.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(args.teacher_threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.teacher_threads))
    from medistill.console import setup_logging
    from medistill.teachers.shards import Shard

    setup_logging()
    try:
        summary = teach_one(args, Shard(index, count),
                            on_progress=lambda done, total: messages.put(("progress", index, done)))
        messages.put(("done", index, summary))
    except MedistillError as error:
        messages.put(("error", index, str(error)))
    except BaseException as error:  # noqa: BLE001 - reported by the parent, which exits 2
        messages.put(("error", index, f"{type(error).__name__}: {error}"))


def _export_once(args: argparse.Namespace) -> None:
    """Build the teacher once here when its backend needs an export, so the workers find it made."""
    from medistill.teachers.registry import build_teacher, resolved_backend

    needs_export = resolved_backend(args.teacher_backend) != "keras"  # Keras has nothing to export
    if args.teacher.partition(":")[0] == "litemedsam" and needs_export:
        use_runtime_from_args(args)
        build_teacher(args.teacher)


def teach_with_workers(args: argparse.Namespace) -> dict:
    """Run ``args.workers`` shard processes, then merge; the summary."""
    from tqdm.auto import tqdm

    from medistill.boxes.boxes_file import read_boxes
    from medistill.teachers.cache_merge import merge_shards

    count, start = int(args.workers), time.perf_counter()
    if os.path.exists(args.out) and not args.overwrite:
        return teach_one(args)  # merged before: checked (and completed, if need be) as one cache
    total = len(read_boxes(args.boxes).images)
    _export_once(args)
    if args.teacher_threads is None:
        args = argparse.Namespace(**{**vars(args), "teacher_threads": max(1, (os.cpu_count() or 1) // count)})
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    processes = [context.Process(target=_worker, args=(args, i, count, messages), daemon=False)
                 for i in range(count)]
    for process in processes:
        process.start()
    done: dict[int, int] = {}
    summaries: dict[int, dict] = {}
    errors: list[str] = []
    bar, shown = None, 0
    try:
        while len(summaries) + len(errors) < count:
            try:
                kind, index, value = messages.get(timeout=1.0)
            except queue.Empty:
                dead = [i for i, p in enumerate(processes) if not p.is_alive() and p.exitcode not in (0, None)
                        and i not in summaries]
                if dead and messages.empty():
                    errors += [f"worker {i} ended with exit code {processes[i].exitcode}" for i in dead]
                    break
                continue
            if kind == "progress":
                done[index] = value
            elif kind == "done":
                summaries[index] = value
                done[index] = value["done_before"] + value["written"]
            else:
                errors.append(f"worker {index} (--shard {index}/{count}): {value}")
            if bar is None and len(done) == count:
                # Every shard has said what it held already: the rate and ETA count only new images.
                shown = sum(done.values())
                bar = tqdm(total=total, initial=shown, desc=f"teach ({args.teacher}, {count} workers)",
                           unit="image", disable=args.no_progress, smoothing=0)
            if bar is not None and sum(done.values()) > shown:
                bar.update(sum(done.values()) - shown)
                shown = sum(done.values())
    finally:
        if bar is not None:
            bar.close()
        for process in processes:
            process.join(timeout=None if not errors else 5)
    if errors:
        raise MedistillError("teach --workers: " + "; ".join(errors) + ". The finished images are kept in the "
                             "shard caches: run the same command again to resume")
    merged = merge_shards(args.out, count, args.boxes, overwrite=args.overwrite)
    written = sum(s["written"] for s in summaries.values())
    seconds = time.perf_counter() - start
    return {"images": total, "done_before": sum(s["done_before"] for s in summaries.values()), "written": written,
            "seconds": round(seconds, 3), "images_per_second": round(written / seconds, 3) if written else 0.0,
            "workers": count, "backend": summaries[0].get("backend"), "shards": merged["shards"]}
