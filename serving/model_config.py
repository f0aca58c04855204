"""TF Serving's ``--model_config_file``: a ``ModelServerConfig`` in protobuf text format.

Only what rnnkit's server uses is interpreted (``model_config_list { config { name base_path
version_labels } }``); other fields (``model_platform``, ``model_version_policy``, ...) are read
and ignored. The reader is a small text-format parser so that no TensorFlow protos are
needed on the ONNX Runtime path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Union

Value = Union[str, int, float, "Message"]
Message = dict[str, list[Value]]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      | (?P<number>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
      | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<punct>[{}<>:\[\],;])
    )""",
    re.VERBOSE,
)
_CLOSE = {"{": "}", "<": ">"}


class ModelConfigError(ValueError):
    """The model config file cannot be read or has an unusable entry."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    version_labels: dict[str, int] = field(default_factory=dict)


def _tokens(text: str, source: str) -> list[tuple[str, str, int]]:
    tokens = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            line = text.count("\n", 0, position) + 1
            raise ModelConfigError(f"{source}:{line}: cannot parse text near {text[position : position + 20]!r}")
        position = match.end()
        kind = match.lastgroup or ""
        if kind != "comment":
            tokens.append((kind, match.group(kind), text.count("\n", 0, match.start(kind)) + 1))
    return tokens


def _unquote(token: str) -> str:
    body = token[1:-1]
    return bytes(body, "utf-8").decode("unicode_escape") if "\\" in body else body


def parse_text_format(text: str, source: str = "<config>") -> Message:
    """Protobuf text format -> nested dicts of field name -> list of values (repeated or not)."""
    tokens = _tokens(text, source)
    index = 0

    def fail(message: str) -> ModelConfigError:
        line = tokens[min(index, len(tokens) - 1)][2] if tokens else 1
        return ModelConfigError(f"{source}:{line}: {message}")

    def message(closing: str | None) -> Message:
        nonlocal index
        fields: Message = {}
        while True:
            if index >= len(tokens):
                if closing is None:
                    return fields
                raise fail(f"missing '{closing}'")
            kind, token, _ = tokens[index]
            if closing is not None and token == closing and kind == "punct":
                index += 1
                return fields
            if kind != "ident":
                raise fail(f"expected a field name, found {token!r}")
            index += 1
            if index < len(tokens) and tokens[index][1] == ":":
                index += 1
            if index >= len(tokens):
                raise fail(f"field {token!r} has no value")
            value_kind, value, _ = tokens[index]
            index += 1
            if value in _CLOSE and value_kind == "punct":
                fields.setdefault(token, []).append(message(_CLOSE[value]))
            elif value_kind == "string":
                fields.setdefault(token, []).append(_unquote(value))
            elif value_kind == "number":
                fields.setdefault(token, []).append(float(value) if re.search(r"[.eE]", value) else int(value))
            elif value_kind == "ident":
                fields.setdefault(token, []).append(value)
            else:
                raise fail(f"field {token!r} has no usable value (found {value!r})")
            if index < len(tokens) and tokens[index][1] in (",", ";"):
                index += 1

    return message(None)


def _one(fields: Message, name: str, kind: type, where: str) -> object:
    values = fields.get(name, [])
    if len(values) != 1 or not isinstance(values[0], kind):
        raise ModelConfigError(f"{where}: expected exactly one `{name}` ({kind.__name__}), found {values!r}")
    return values[0]


def parse_model_config(text: str, source: str = "<config>") -> list[ModelConfig]:
    root = parse_text_format(text, source)
    lists = root.get("model_config_list", [])
    if len(lists) != 1 or not isinstance(lists[0], dict):
        raise ModelConfigError(
            f"{source}: expected one `model_config_list {{ ... }}` block (only ModelConfigList is supported)"
        )
    configs = []
    for position, entry in enumerate(lists[0].get("config", [])):
        where = f"{source}: config #{position + 1}"
        if not isinstance(entry, dict):
            raise ModelConfigError(f"{where}: expected a `config {{ ... }}` block")
        name = str(_one(entry, "name", str, where))
        base_path = os.path.abspath(str(_one(entry, "base_path", str, where)))
        labels: dict[str, int] = {}
        for label in entry.get("version_labels", []):
            if not isinstance(label, dict):
                raise ModelConfigError(f"{where}: `version_labels` must be a {{ key value }} block")
            labels[str(_one(label, "key", str, where))] = int(str(_one(label, "value", int, where)))
        configs.append(ModelConfig(name, base_path, labels))
    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelConfigError(f"{source}: model names must be unique; repeated: {duplicates}")
    if not configs:
        raise ModelConfigError(f"{source}: the model_config_list has no `config` entries")
    return configs


def read_model_config(path: str) -> list[ModelConfig]:
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as error:
        raise ModelConfigError(f"cannot read model config file {path!r}: {error}") from error
    return parse_model_config(text, path)
