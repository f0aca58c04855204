"""Client-chosen numbers and ids, bounded and canonical, read the same way on every front.

``str.isdigit`` accepts characters ``int`` refuses ("²") and ``int`` refuses strings of more than
4300 digits, so a check with the one and a conversion with the other answered 500 on the wire.
Here a number is ASCII digits only, of bounded length, within its range; anything else is a 400
that quotes (a bounded prefix of) what was received.
"""

from __future__ import annotations

from rnnkit_serving.errors import invalid_argument

MAX_VERSION = (1 << 63) - 1  # versions are int64, as TF Serving's ModelSpec.version
MAX_SEQUENCE_ID = (1 << 64) - 1  # Triton's sequence ids are uint64 (or strings)
_SHOWN = 64  # characters of a refused value quoted back


def shown(text: str) -> str:
    """`text` as a message quotes it: repr, cut to a bounded prefix with its length when long."""
    if len(text) <= _SHOWN:
        return repr(text)
    return f"{text[:_SHOWN]!r}... ({len(text)} characters)"


def ascii_uint(text: str, maximum: int) -> int | None:
    """`text` as an integer in [0, maximum] written with ASCII digits only; None if it is not one."""
    if not text or len(text) > len(str(maximum)) or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= maximum else None


def parse_version(text: str) -> int:
    """A model version from a path, a header or a request field."""
    value = ascii_uint(text, MAX_VERSION)
    if value is None:
        raise invalid_argument(f"model version must be an integer; received {shown(text)}")
    return value


def check_integer_sequence_id(value: int) -> None:
    """An integer sequence id is Triton's uint64, not 0 (0 means "no sequence")."""
    if not 0 < value <= MAX_SEQUENCE_ID:
        received = str(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
        raise invalid_argument(
            f"parameter 'sequence_id' must be an unsigned 64-bit integer or a string; received {received}"
        )


def check_sequence_id(value: int | str, max_length: int) -> None:
    """A sequence id: an integer in [1, 2**64 - 1] (Triton's uint64) or a string of at most
    `max_length` UTF-8 bytes (--max_sequence_id_length)."""
    if isinstance(value, int):
        check_integer_sequence_id(value)
        return
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_length:
        raise invalid_argument(
            f"sequence id is {size} bytes long; the limit is {max_length} (--max_sequence_id_length); "
            f"received {shown(value)}"
        )
