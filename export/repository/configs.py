"""The server configs of a model repository, rendered as text: pure functions, no file access.

- ``models.config``: TF Serving's ``--model_config_file`` (every SavedModel model of the tree);
- ``<name>/config.pbtxt``: Triton, platform ``onnxruntime_onnx``, dynamic batching;
- ``<name>_step/config.pbtxt``: a sequence-batched step model whose RNN states Triton keeps
  (implicit state, starting at zero);
- ``<name>_decoder_step/config.pbtxt``: the seeded decoder step (``triton_seed``), whose first
  request takes the encoder's states and whose later requests take Triton's carried ones.

Where the files go, and how they replace the old ones atomically, is ``publish``'s business.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterable

from rnnkit_export.analysis.model_io import TensorInfo
from rnnkit_export.repository import RepositoryError
from rnnkit_export.repository.triton_seed import START, carry_name
from rnnkit_export.streaming.step import EncoderDecoder, StreamingPlan
from rnnkit_serving.core.repository_format import DECODER_STEP_FILE, MODEL_FILE, STEP_FILE

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


def models_config(names: Iterable[str], base: str, serving_base: str | None = None) -> str:
    """``models.config`` text listing the SavedModel models `names` (sorted, once each). Each
    ``base_path`` is the model's directory under `serving_base` (where servers will see the
    repository, e.g. ``/models`` in a container) when given, else under `base` on this machine."""
    blocks = []
    for name in sorted(set(names)):
        model_path = os.path.join(base, name) if serving_base is None else posixpath.join(serving_base, name)
        blocks.append(
            "  config {\n"
            f'    name: "{name}"\n'
            f'    base_path: "{model_path}"\n'
            '    model_platform: "tensorflow"\n'
            "    model_version_policy { latest { num_versions: 1 } }\n"
            "  }\n"
        )
    return "model_config_list {\n" + "".join(blocks) + "}\n"


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


def _header(name: str, filename: str, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> str:
    """The lines every rnnkit Triton model starts with: name, platform, file, batch, tensors."""
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f'default_model_filename: "{filename}"\n'
        f"max_batch_size: {TRITON_MAX_BATCH}\n" + _tensor_blocks("input", inputs) + _tensor_blocks("output", outputs)
    )


def triton_config(name: str, inputs: list[TensorInfo], outputs: list[TensorInfo], filename: str = MODEL_FILE) -> str:
    """A dynamically batched Triton model over one ONNX file (the full model, or an encoder)."""
    return _header(name, filename, inputs, outputs) + "dynamic_batching { }\n"


def _implicit_states(plan: StreamingPlan, input_name: Callable[[str], str]) -> list[str]:
    """Triton ``sequence_batching.state`` entries, one per recurrent state of `plan`, starting at zero;
    `input_name` maps a state's step-graph input to the name Triton feeds it under."""
    return [
        "    {\n"
        f'      input_name: "{input_name(state_in)}"\n'
        f'      output_name: "{state_out}"\n'
        "      data_type: TYPE_FP32\n"
        f"      dims: [ {layer.units} ]\n"
        f"      initial_state: {{ data_type: TYPE_FP32 dims: [ {layer.units} ] "
        'zero_data: true name: "zeros" }\n'
        "    }"
        for layer in plan.layers
        for state_in, state_out in zip(layer.inputs(), layer.outputs())
    ]


def triton_step_config(name: str, inputs: list[TensorInfo], outputs: list[TensorInfo], plan: StreamingPlan) -> str:
    """A sequence-batched Triton model over step.onnx; RNN states live in Triton (implicit state)."""
    states = _implicit_states(plan, lambda state_in: state_in)
    return (
        _header(name, STEP_FILE, inputs, outputs) + "sequence_batching {\n"
        f"  max_sequence_idle_microseconds: {STREAM_IDLE_MICROSECONDS}\n"
        "  direct { }\n"
        "  state [\n" + ",\n".join(states) + "\n  ]\n"
        "}\n"
    )


def triton_decoder_step_config(name: str, pair: EncoderDecoder) -> str:
    """A sequence-batched Triton model over the seeded decoder step (``triton_seed``): the client
    sends the encoder's outputs with the sequence's first request; Triton carries the states after."""
    plan = pair.plan
    states = _implicit_states(plan, carry_name)
    return (
        _header(name, DECODER_STEP_FILE, plan.step_inputs(pair.decoder_io), list(pair.decoder_io.outputs))
        + "sequence_batching {\n"
        f"  max_sequence_idle_microseconds: {STREAM_IDLE_MICROSECONDS}\n"
        "  direct { }\n"
        "  control_input [\n"
        "    {\n"
        f'      name: "{START}"\n'
        "      control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ]\n"
        "    }\n"
        "  ]\n"
        "  state [\n" + ",\n".join(states) + "\n  ]\n"
        "}\n"
    )
