"""Choosing a `tf.distribute` strategy by name, and who writes files under it."""

from __future__ import annotations

import tensorflow as tf

DISTRIBUTE = ("default", "mirrored", "multiworker")


def split_cpu(replicas: int) -> list[str]:
    """Split the host CPU into ``replicas`` logical devices (for MirroredStrategy on one CPU).

    Only possible before TensorFlow initializes its devices; otherwise raises ``RuntimeError``
    unless the split already matches.
    """
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"Argument `cpu_replicas` must be a positive integer. Received: cpu_replicas={replicas!r}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is None or len(current) != replicas:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
        except RuntimeError as error:
            raise RuntimeError(
                f"cpu_replicas={replicas}: TensorFlow's devices are already initialized in this process; "
                "split the CPU before any TensorFlow op runs (e.g. pass --cpu-replicas to `rnnkit train`)."
            ) from error
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def make_strategy(distribute: str | tf.distribute.Strategy | None = None, cpu_replicas: int | None = None):
    """``None``/``"default"`` -> the default strategy; ``"mirrored"`` -> MirroredStrategy over all
    GPUs (or ``cpu_replicas`` logical CPU devices); ``"multiworker"`` ->
    MultiWorkerMirroredStrategy configured by ``TF_CONFIG``. A strategy object passes through.

    MultiWorkerMirroredStrategy must be created before any other TensorFlow op runs.
    """
    if isinstance(distribute, tf.distribute.Strategy):
        return distribute
    if distribute is None:
        distribute = "default"
    if distribute not in DISTRIBUTE:
        raise ValueError(f"Argument `distribute` must be one of {DISTRIBUTE}. Received: distribute={distribute!r}")
    if distribute == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = split_cpu(cpu_replicas) if cpu_replicas else None
    if distribute == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if devices is not None and len(devices) > 1:
        raise ValueError(
            f"Argument `cpu_replicas` needs distribute='mirrored'. Received: cpu_replicas={cpu_replicas!r}, "
            f"distribute={distribute!r}"
        )
    return tf.distribute.get_strategy()


def worker_index(strategy) -> int:
    """This process's worker index (0 outside multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 0
    return int(resolver.task_id or 0)


def is_chief(strategy) -> bool:
    """True for the process that writes the shared outputs (worker 0, or the ``chief`` task)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return not has_chief and resolver.task_type == "worker" and int(resolver.task_id or 0) == 0
