"""The nesting depth of a JSON body, measured on its bytes before any parser sees it.

Parsers recurse per nesting level: Python's ``json`` raises RecursionError around depth 1000 and
orjson refuses beyond 1024, and the codecs walk the parsed value recursively too. A body nested
deeper than :data:`MAX_JSON_DEPTH` (Triton's limit) is refused first, by a loop over its
brackets (strings removed), never by recursion.
"""

from __future__ import annotations

import re

import numpy as np

MAX_JSON_DEPTH = 100  # arrays and objects inside each other, as Triton counts them
_CHUNK = 1 << 20  # bytes per step of the scan (bounds its temporary arrays)
# a JSON string (escapes included); anything the parser would refuse inside one makes it stop there
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_STEP = np.zeros(256, np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays/objects in `body` (brackets inside strings do not count)."""
    if b'"' in body:
        body = _STRING.sub(b"", body)
    deepest, depth = 0, 0
    for start in range(0, len(body), _CHUNK):
        steps = _STEP[np.frombuffer(body, np.uint8, count=min(_CHUNK, len(body) - start), offset=start)]
        if not steps.any():
            continue
        running = np.cumsum(steps, dtype=np.int64) + depth
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
    return deepest


def exceeds_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `body` nests deeper than `limit`: free for bodies with fewer brackets than that."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    return json_depth(body) > limit
