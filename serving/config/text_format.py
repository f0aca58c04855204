"""Protobuf text format, as TF Serving's config files use it, read without any protobuf module.

``--model_config_file`` (:mod:`rnnkit_serving.config.model_config`) and ``--batching_parameters_file``
(:mod:`rnnkit_serving.config.batching_config`) are both read by :func:`parse_text_format` into nested dicts;
each reader then checks the fields it knows.
"""

from __future__ import annotations

import re
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


class ConfigError(ValueError):
    """A config file (model config, batching parameters) cannot be read or has an unusable entry."""


def _tokens(text: str, source: str) -> list[tuple[str, str, int]]:
    tokens = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            line = text.count("\n", 0, position) + 1
            raise ConfigError(f"{source}:{line}: cannot parse text near {text[position : position + 20]!r}")
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

    def fail(message: str) -> ConfigError:
        line = tokens[min(index, len(tokens) - 1)][2] if tokens else 1
        return ConfigError(f"{source}:{line}: {message}")

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
