"""Which ``tf.distribute`` strategy the trainer runs under, and where each worker writes.

- ``TF_CONFIG`` describes a cluster of two or more tasks (``chief`` and/or ``worker``):
  ``MultiWorkerMirroredStrategy``. Every worker runs the same command on the same data;
  each epoch's batches are sharded between them and their gradients are summed over the
  network (ring all-reduce), so they all hold the same weights after every step.
- Otherwise several local GPUs: ``MirroredStrategy``; else the default strategy (one GPU
  or the CPU), exactly as before.

Per TensorFlow's multi-worker guide only the chief (the ``chief`` task, or ``worker`` 0
when there is none) writes the run folder; the other workers run the same code, saves
included, into a temporary folder that is removed when they finish.

``MultiWorkerMirroredStrategy`` must be created before TensorFlow does anything else in
the process, so ``training.train.run`` calls ``choose_strategy`` first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("training")

TASK_TYPES = ("chief", "worker")


class ClusterConfigError(ValueError):
    """TF_CONFIG is set but does not describe a usable cluster."""


def cluster_config(environ=None) -> dict | None:
    """``TF_CONFIG`` parsed, when it names a cluster of two or more tasks; None for one machine."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except ValueError:
        raise ClusterConfigError(f"TF_CONFIG is not JSON: {raw[:80]!r}") from None
    cluster = config.get("cluster") or {}
    tasks = sum(len(cluster.get(kind) or []) for kind in TASK_TYPES)
    if tasks < 2:
        return None
    task = config.get("task") or {}
    if task.get("type") not in TASK_TYPES or not 0 <= int(task.get("index", -1)) < len(cluster.get(task["type"]) or []):
        raise ClusterConfigError(f"TF_CONFIG's task {task!r} is not one of its cluster's {TASK_TYPES} tasks")
    return config


def choose_strategy(environ=None):
    """MultiWorkerMirroredStrategy for a TF_CONFIG cluster, MirroredStrategy for several GPUs, else the default.

    The chosen strategy is also made the process's current one, so every model, optimizer
    and ``fit`` the trainer makes (the head warm-up's included) is built and run under it.
    """
    import tensorflow as tf

    if cluster_config(environ) is not None:
        # RING: collectives over gRPC, which every CPU host has (NCCL needs GPUs).
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        tf.distribute.experimental_set_strategy(strategy)
        _let_keras_fit_build_under_multi_worker()
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def _let_keras_fit_build_under_multi_worker() -> None:
    """Work around keras-team/keras#20585 (Keras 3.15 here): ``fit`` under MultiWorkerMirroredStrategy fails at once.

    Before its first step, Keras' TensorFlow trainer takes one batch and averages it over the
    workers (``strategy.reduce("MEAN", batch)``) only to learn the input shapes for building
    the optimizer and metrics. Under this strategy that reduce is given the whole (x, y, weight)
    tuple and raises "Attempt to convert a value (PerReplica...) ... to a Tensor". The shapes
    need no averaging: this builds from the batch's local part instead. Applied only when the
    trainer runs multi-worker; the single-worker path is untouched.
    """
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as trainer_module
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    if getattr(TensorFlowTrainer, "_multi_worker_build_patched", False):
        return
    original = TensorFlowTrainer._maybe_symbolic_build

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is not None and iterator is not None:
            strategy = self._distribute_strategy
            for _, _, it in iterator:
                data_batch = tree.map_structure(
                    lambda x: strategy.experimental_local_results(x)[0]
                    if isinstance(x, tf.distribute.DistributedValues) else x, next(it))
                break
            iterator = None
        return original(self, iterator=iterator, data_batch=data_batch)

    TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    TensorFlowTrainer._multi_worker_build_patched = True

    # The same issue, one step later: each step's loss and metrics are averaged over the
    # workers with ``strategy.reduce("MEAN", v, axis=0)``, which fails for the scalars they
    # are ("Invalid reduction dimension 0 for input with 0 dimensions"). Scalars are
    # averaged over the workers as they are (axis None); anything else as before.
    original_reduce = trainer_module.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer_module._collective_all_reduce_multi_worker(strategy):
            def mean(v):
                local = strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v
                return strategy.reduce("MEAN", v, axis=0 if len(getattr(local, "shape", ())) else None)

            return tree.map_structure(mean, values)
        return original_reduce(values, strategy, reduction)

    trainer_module.reduce_per_replica = reduce_per_replica


def _task(strategy) -> tuple[str | None, int | None, dict]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return None, None, {}
    return resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict()


def worker_count(strategy) -> int:
    _, _, cluster = _task(strategy)
    return sum(len(cluster.get(kind, [])) for kind in TASK_TYPES) or 1


def describe(strategy) -> str:
    """One line for the log: which strategy, and which task of how many this process is."""
    task_type, task_id, _ = _task(strategy)
    name = type(strategy).__name__
    if task_type is None:
        return f"{name}, {strategy.num_replicas_in_sync} replica(s), one worker"
    role = "chief, writes the run folder" if is_chief(strategy) else "writes to a temporary folder"
    return (f"{name}, {task_type} {task_id} of {worker_count(strategy)} workers ({role}), "
            f"{strategy.num_replicas_in_sync} replicas in sync")


def is_chief(strategy) -> bool:
    """The one task that writes the run folder: ``chief``, or ``worker`` 0 when the cluster has no chief."""
    task_type, task_id, cluster = _task(strategy)
    if task_type is None or not cluster:
        return True
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)


def worker_out_dir(out_dir: str, strategy) -> str:
    """``out_dir`` for the chief; a fresh temporary folder for every other worker."""
    if is_chief(strategy):
        return out_dir
    task_type, task_id, _ = _task(strategy)
    return tempfile.mkdtemp(prefix=f"lesion-train-{task_type}{task_id}-")


def finish_worker(out_dir: str, strategy, model=None) -> None:
    """Log the weights' fingerprint (equal on every worker when they trained as one) and drop a worker's temp folder."""
    if model is not None:
        digest = hashlib.sha256()
        for w in model.get_weights():
            digest.update(w.tobytes())
        task_type, task_id, _ = _task(strategy)
        log.info("%s: weights fingerprint %s", f"{task_type} {task_id}" if task_type else "single worker",
                 digest.hexdigest()[:16])
    if not is_chief(strategy) and Path(out_dir).name.startswith("lesion-train-"):
        shutil.rmtree(out_dir, ignore_errors=True)
