"""The model repository on disk: atomic version directories and the server configs.

Layout (ARCHITECTURE.md, contract 3)::

    <base>/models.config              TF Serving --model_config_file (every model under <base>)
    <base>/<name>/config.pbtxt        Triton, platform onnxruntime_onnx, dynamic batching
    <base>/<name>/<version>/          saved_model.pb, variables/, assets.extra/, model.onnx, step.onnx, rnnkit.json
    <base>/<name>_step/config.pbtxt   Triton sequence-batched step model with implicit state
    <base>/<name>_step/<version>/step.onnx

A version is written under a hidden temporary name beside its final place and renamed into
place only when complete and verified, so a server polling <base> never sees half of it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

from export.model_io import TensorInfo
from export.step import StreamingPlan

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TMP_PREFIX = ".rnnkit-tmp-"
MANIFEST = "rnnkit.json"
STEP_SUFFIX = "_step"
TRITON_MAX_BATCH = 64
STREAM_IDLE_MICROSECONDS = 60_000_000
TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}


class RepositoryError(ValueError):
    """The base path, model name or version cannot be used."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise RepositoryError(
            f"argument `model_name` must match {MODEL_NAME.pattern} (letters, digits, '_', '.', '-'). "
            f"Received: model_name={name!r}"
        )
    return name


def versions(model_dir: str) -> list[int]:
    """Published version numbers under a model directory (TF Serving's rule: integer names)."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(entry) for entry in os.listdir(model_dir) if entry.isdigit())


def next_version(model_dir: str) -> int:
    return (versions(model_dir) or [0])[-1] + 1


def check_base_path(base_path: str) -> str:
    base = os.path.abspath(base_path)
    try:
        os.makedirs(base, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=base, prefix=TMP_PREFIX):
            pass
    except OSError as error:
        raise RepositoryError(f"model_base_path {base!r} is not a writable directory: {error}") from error
    return base


@contextlib.contextmanager
def staged_directory(final: str) -> Iterator[str]:
    """Yield a temporary directory beside `final`; rename it to `final` if the block succeeds,
    delete it if it fails. An existing `final` is never touched."""
    if os.path.exists(final):
        raise RepositoryError(f"{final!r} already exists; published versions are never overwritten")
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.path.basename(final)}-", dir=parent)
    try:
        yield staging
        os.rename(staging, final)  # atomic on one filesystem; fails if final appeared meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_text_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(path)
    handle, staging = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(staging, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise


def tf_serving_models(base: str) -> list[str]:
    """Model directories under `base` with at least one SavedModel version."""
    found = []
    for entry in sorted(os.listdir(base)):
        model_dir = os.path.join(base, entry)
        if any(os.path.isfile(os.path.join(model_dir, str(v), "saved_model.pb")) for v in versions(model_dir)):
            found.append(entry)
    return found


def write_models_config(base: str) -> str:
    """(Re)write <base>/models.config covering every SavedModel model under <base>."""
    blocks = []
    for name in tf_serving_models(base):
        blocks.append(
            "  config {\n"
            f'    name: "{name}"\n'
            f'    base_path: "{os.path.join(base, name)}"\n'
            '    model_platform: "tensorflow"\n'
            "    model_version_policy { latest { num_versions: 1 } }\n"
            "  }\n"
        )
    text = "model_config_list {\n" + "".join(blocks) + "}\n"
    path = os.path.join(base, "models.config")
    write_text_atomically(path, text)
    return path


def _dims(shape: list[int | None]) -> str:
    return "[ " + ", ".join("-1" if d is None else str(d) for d in shape[1:]) + " ]"


def _tensor_blocks(kind: str, infos: list[TensorInfo]) -> str:
    parts = []
    for info in infos:
        if info.dtype not in TRITON_TYPES:
            raise RepositoryError(f"{kind} '{info.name}': dtype {info.dtype} has no Triton type")
        parts.append(
            f'  {{\n    name: "{info.name}"\n    data_type: {TRITON_TYPES[info.dtype]}\n'
            f"    dims: {_dims(info.shape)}\n  }}"
        )
    return f"{kind} [\n" + ",\n".join(parts) + "\n]\n"


def triton_config(name: str, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> str:
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        'default_model_filename: "model.onnx"\n'
        f"max_batch_size: {TRITON_MAX_BATCH}\n"
        + _tensor_blocks("input", inputs)
        + _tensor_blocks("output", outputs)
        + "dynamic_batching { }\n"
    )


def triton_step_config(name: str, inputs: list[TensorInfo], outputs: list[TensorInfo], plan: StreamingPlan) -> str:
    """A sequence-batched Triton model over step.onnx; RNN states live in Triton (implicit state)."""
    states = []
    for layer in plan.layers:
        for state_in, state_out in zip(layer.inputs(), layer.outputs()):
            states.append(
                "    {\n"
                f'      input_name: "{state_in}"\n'
                f'      output_name: "{state_out}"\n'
                "      data_type: TYPE_FP32\n"
                f"      dims: [ {layer.units} ]\n"
                f"      initial_state: {{ data_type: TYPE_FP32 dims: [ {layer.units} ] "
                'zero_data: true name: "zeros" }\n'
                "    }"
            )
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        'default_model_filename: "step.onnx"\n'
        f"max_batch_size: {TRITON_MAX_BATCH}\n"
        + _tensor_blocks("input", inputs)
        + _tensor_blocks("output", outputs)
        + "sequence_batching {\n"
        f"  max_sequence_idle_microseconds: {STREAM_IDLE_MICROSECONDS}\n"
        "  direct { }\n"
        "  state [\n" + ",\n".join(states) + "\n  ]\n"
        "}\n"
    )


def publish_triton_step(base: str, name: str, version: int, step_onnx: str) -> str:
    """<base>/<name>_step/<version>/step.onnx (a hard link to the version's file when possible)."""
    final = os.path.join(base, name + STEP_SUFFIX, str(version))
    with staged_directory(final) as staging:
        target = os.path.join(staging, "step.onnx")
        try:
            os.link(step_onnx, target)
        except OSError:
            shutil.copyfile(step_onnx, target)
    return final
