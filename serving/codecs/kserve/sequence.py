"""Triton's sequence parameters of a KServe v2 request, whatever the wire: which sequence a request
is a chunk of, and whether it starts or ends it (``sequence_id``, ``sequence_start``,
``sequence_end`` request parameters, or the ``x-rnnkit-sequence-id`` header / gRPC metadata key).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rnnkit_serving.core.identifiers import MAX_SEQUENCE_ID, ascii_uint, check_integer_sequence_id, shown
from rnnkit_serving.errors import invalid_argument


@dataclass(frozen=True)
class SequenceControl:
    """Triton's sequence parameters of one request: which sequence, and whether it starts or ends it."""

    id: int | str
    start: bool
    end: bool


def sequence_id(parameters: Mapping[str, Any]) -> int | str | None:
    """Triton's ``sequence_id`` request parameter (uint64 or string); None when the request is not
    part of a sequence. ``sequence_start``/``sequence_end`` without a non-zero id is an error."""
    raw = parameters.get("sequence_id")
    start, end = parameters.get("sequence_start", False), parameters.get("sequence_end", False)
    for flag, value in (("sequence_start", start), ("sequence_end", end)):
        if not isinstance(value, bool):
            raise invalid_argument(f"parameter '{flag}' must be a boolean, received {value!r}")
    if raw is None or raw == 0 or raw == "":
        if start or end:
            raise invalid_argument(
                "inference request to a sequence must specify a non-zero or non-empty correlation ID "
                "(parameter 'sequence_id')"
            )
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, str)) or (isinstance(raw, int) and raw < 0):
        shown_raw = shown(raw) if isinstance(raw, str) else shown(repr(raw))
        raise invalid_argument(f"parameter 'sequence_id' must be an unsigned integer or a string, received {shown_raw}")
    if isinstance(raw, int):
        check_integer_sequence_id(raw)
    return raw


SEQUENCE_HEADER = "x-rnnkit-sequence-id"


def header_sequence_id(value: str) -> int | str:
    """The sequence id a request header carries: digits are Triton's uint64 ids, anything else a string id."""
    text = value.strip()
    if not text:
        raise invalid_argument(f"header '{SEQUENCE_HEADER}' is empty; send the sequence id or leave the header out")
    number = ascii_uint(text, MAX_SEQUENCE_ID)
    return text if number is None else number


def sequence_control(doc: Any, header: str | None = None) -> SequenceControl | None:
    """The sequence a parsed request body belongs to (from its ``parameters``), or None.

    `header`: the ``x-rnnkit-sequence-id`` request header (HTTP header or gRPC metadata), which
    carries the id for load balancers that hash on it; it may stand in for the ``sequence_id``
    parameter, and when both are given they must name the same sequence. Read before the model
    is resolved, so a malformed sequence parameter is refused first; a ``parameters`` that is not
    an object is left to :func:`decode_infer_request` to refuse.
    """
    parameters = doc.get("parameters") if isinstance(doc, dict) else None
    if not isinstance(parameters, dict):
        parameters = {}
    key = sequence_id(parameters) if header is None or "sequence_id" in parameters else None
    if header is not None:
        from_header = header_sequence_id(header)
        if key is None and "sequence_id" not in parameters:
            parameters = {**parameters, "sequence_id": from_header}
            key = sequence_id(parameters)
        elif str(key) != str(from_header):
            raise invalid_argument(
                f"header '{SEQUENCE_HEADER}' names sequence {from_header!r} but parameter 'sequence_id' names "
                f"{key!r}; they must agree (the header routes the request, the parameter selects the session)"
            )
    if key is None:
        return None
    return SequenceControl(key, bool(parameters.get("sequence_start")), bool(parameters.get("sequence_end")))
