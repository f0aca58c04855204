"""TF Serving's ``--batching_parameters_file``: ``BatchingParameters`` in protobuf text format.

Read with the same text-format reader as ``--model_config_file`` (:mod:`rnnkit_serving.config.text_format`);
the fields this server uses are checked, the others TF Serving defines are accepted and ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from rnnkit_serving.config.text_format import ConfigError, Message, parse_text_format

# Fields of TF Serving's BatchingParameters this server reads; the others are accepted and ignored.
BATCHING_FIELDS = ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches")
IGNORED_FIELDS = (
    "thread_pool_name",
    "pad_variable_length_inputs",
    "enable_large_batch_splitting",
    "max_execution_batch_size",
)


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's ``BatchingParameters``; defaults are its ``BasicBatchScheduler`` defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_enqueued_batches: int = 10
    allowed_batch_sizes: tuple[int, ...] = ()
    # rnnkit: length buckets for zero-padding-invariant models (0 = quarter-octaves)
    bucket_width: int = 0

    def __post_init__(self) -> None:
        for name in BATCHING_FIELDS:
            if int(getattr(self, name)) < (0 if name == "batch_timeout_micros" else 1):
                raise ValueError(f"batching parameter `{name}` must be positive; received {getattr(self, name)}")
        if self.bucket_width < 0:
            raise ValueError(f"`bucket_width` must be >= 0 (0 = quarter-octaves); received {self.bucket_width}")
        sizes = self.allowed_batch_sizes
        if sizes:
            if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise ValueError(f"allowed_batch_sizes must be increasing positive integers; received {list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(
                    "Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                    f"{sizes[-1]}; expected {self.max_batch_size}"
                )


DEFAULT_BATCHING = BatchingParameters()


def _scalar(fields: Message, name: str, source: str) -> int | None:
    values = fields.get(name, [])
    if not values:
        return None
    value = values[-1]
    if isinstance(value, dict):  # the Int64Value wrapper: `max_batch_size { value: 64 }`
        inner = value.get("value", [])
        value = inner[-1] if inner else 0
    if not isinstance(value, int):
        raise ConfigError(f"{source}: `{name}` must be an integer (`{name} {{ value: N }}`); received {value!r}")
    return value


def parse_batching_parameters(
    text: str, source: str = "<batching parameters>", bucket_width: int = 0
) -> BatchingParameters:
    """TF Serving's ``--batching_parameters_file`` text format -> :class:`BatchingParameters`."""
    fields = parse_text_format(text, source)
    unknown = sorted(set(fields) - set(BATCHING_FIELDS) - set(IGNORED_FIELDS) - {"allowed_batch_sizes"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown batching parameters {unknown}; expected {list(BATCHING_FIELDS)} "
            f"(+ allowed_batch_sizes; ignored: {list(IGNORED_FIELDS)})"
        )
    given = {name: _scalar(fields, name, source) for name in BATCHING_FIELDS}
    sizes = fields.get("allowed_batch_sizes", [])
    if not all(isinstance(s, int) for s in sizes):
        raise ConfigError(f"{source}: allowed_batch_sizes must be integers; received {sizes!r}")
    try:
        return BatchingParameters(
            **{k: v for k, v in given.items() if v is not None},
            allowed_batch_sizes=tuple(int(str(s)) for s in sizes),
            bucket_width=bucket_width,
        )
    except ValueError as error:
        raise ConfigError(f"{source}: {error}") from None


def read_batching_parameters(path: str | None, bucket_width: int = 0) -> BatchingParameters:
    if not path:
        return BatchingParameters(bucket_width=bucket_width)
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as error:
        raise ConfigError(f"cannot read batching parameters file {path!r}: {error}") from error
    return parse_batching_parameters(text, path, bucket_width)
