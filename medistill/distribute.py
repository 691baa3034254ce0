"""Choosing a ``tf.distribute`` strategy from the devices present.

One code path serves one CPU, one GPU, several GPUs (``MirroredStrategy``) and several
machines (``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names more than one
worker). ``cpu_replicas`` splits the CPU into logical devices so that multi-replica code
can be exercised without GPUs; it must run before TensorFlow touches a device.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import tensorflow as tf

from medistill.errors import MedistillError


def _tf_config() -> dict:
    """``TF_CONFIG`` as a dict (empty when unset)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as error:
        raise MedistillError(f"TF_CONFIG is not valid JSON: {error}") from error
    if not isinstance(spec, dict):
        raise MedistillError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return spec


def chief_by_tf_config() -> bool:
    """Whether this process is the chief, read from ``TF_CONFIG`` (before any strategy exists)."""
    spec = _tf_config()
    if not spec:
        return True
    task = spec.get("task", {})
    kind, index = task.get("type"), int(task.get("index", 0))
    if kind == "chief":
        return True
    return kind in (None, "worker") and index == 0 and "chief" not in spec.get("cluster", {})


def task_names() -> tuple[str, list[str]]:
    """This process's task and every task of the cluster, as ``"worker-1"`` names (``TF_CONFIG``)."""
    spec = _tf_config()
    task = spec.get("task", {})
    own = f"{task.get('type', 'worker')}-{int(task.get('index', 0))}"
    cluster = spec.get("cluster", {})
    return own, [f"{kind}-{index}" for kind in ("chief", "worker") for index in range(len(cluster.get(kind, [])))]


def forget_arrival(folder: Path, name: str) -> None:
    """Remove this task's marker of an earlier :func:`file_barrier` ``name`` (an interrupted run's).

    Call it before the work the barrier ends; the other workers cannot finish that work
    (it needs this one) before this call, so no one mistakes the old marker for a new one.
    """
    own, _ = task_names()
    (Path(folder) / f".{name}-{own}").unlink(missing_ok=True)


def file_barrier(folder: Path, name: str, timeout_s: float = 900.0, poll_s: float = 0.2) -> None:
    """Wait until every worker of ``TF_CONFIG`` has reached this barrier (a no-op on one worker).

    Each worker writes ``folder/.NAME-TASK`` and waits for everyone's. It serves where no
    strategy can: between the teacher's child processes and the parents' own strategies,
    which must not open their servers while another worker's child still holds the
    cluster's ports. ``folder`` must be on the file system the workers share (the run folder).
    """
    if worker_count() <= 1:
        return
    own, everyone = task_names()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".{name}-{own}").write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout_s
    while missing := [task for task in everyone if not (folder / f".{name}-{task}").exists()]:
        if time.monotonic() > deadline:
            raise MedistillError(
                f"waited {timeout_s:.0f} s in {folder} for {', '.join(missing)} to finish '{name}'; "
                "check that worker's log (did it fail, or is --out not on a file system every worker shares?)")
        time.sleep(poll_s)


def configure_cpu_replicas(replicas: int) -> None:
    """Split the CPU into ``replicas`` logical devices (call before any TF op runs)."""
    if replicas <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    except RuntimeError as error:
        raise MedistillError(
            f"cannot split the CPU into {replicas} devices: TensorFlow is already "
            "initialised (choose the strategy before building any model)"
        ) from error


def worker_count() -> int:
    """Number of workers named by ``TF_CONFIG`` (1 when it is absent)."""
    cluster = _tf_config().get("cluster", {})
    return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))


def choose_strategy(cpu_replicas: int = 1) -> tf.distribute.Strategy:
    """Multi-worker if ``TF_CONFIG`` says so, else mirrored over local GPUs or CPUs."""
    configure_cpu_replicas(cpu_replicas)
    if worker_count() > 1:
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in cpus])
    return tf.distribute.OneDeviceStrategy(cpus[0].name)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes the run folder."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def describe(strategy: tf.distribute.Strategy) -> str:
    """A one-line description for logs."""
    return f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)"


def _all_reduce(strategy: tf.distribute.Strategy, values: list[float],
                op: tf.distribute.ReduceOp) -> list[float]:
    vector = tf.constant(values, tf.float32)

    @tf.function
    def reduce():
        return strategy.reduce(op, strategy.run(lambda: tf.identity(vector)), axis=None)

    return [float(v) for v in reduce().numpy()]


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Block until every worker of a multi-worker run gets here; a no-op on one worker."""
    if worker_count() > 1:
        _all_reduce(strategy, [1.0], tf.distribute.ReduceOp.SUM)


def mean_across_workers(strategy: tf.distribute.Strategy, values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over the workers (unchanged on one worker).

    Each worker validates with its own batch-norm statistics; agreeing on the mean keeps
    best-checkpoint and early-stopping decisions identical on every worker, which a
    multi-worker run needs (a worker that stops alone hangs the others).
    """
    if worker_count() <= 1 or not values:
        return values
    names = sorted(values)
    # Every replica contributes its worker's value; with equal replica counts per worker
    # (which MultiWorkerMirroredStrategy requires) the replica mean is the worker mean.
    means = _all_reduce(strategy, [float(values[n]) for n in names], tf.distribute.ReduceOp.MEAN)
    return dict(zip(names, means))
