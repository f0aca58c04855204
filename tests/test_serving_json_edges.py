"""JSON bodies at the edges of the codecs' fast paths (review of the JSON codecs): objects with very many keys,
bodies that are not UTF-8, and the memory of the nesting-depth scan.

Each test fails on the code before the fix: pysimdjson's fast paths looked every key of an object up by a scan of
its keys (quadratic: 20 000 keys took ~0.9 s, at the body limit hours), ``json.loads(bytes)`` read UTF-16/32 bodies
that the byte scans (the depth pre-check, the true/false scan) misread as UTF-8, and the depth scan held ~30
bytes of index arrays per byte of a body."""

import random
import tracemalloc
import warnings

import numpy as np
import pytest

from rnnkit_serving import FakeBackend, Predictor, RestOptions, Signature, TensorSpec, app
from rnnkit_serving.codecs import json_depth
from rnnkit_serving.codecs.kserve import rest as kserve_codec
from rnnkit_serving.codecs.tfs import json_tensor as tfs_json
from rnnkit_serving.errors import ServingError
from rnnkit_serving.registry import ModelRegistry

X = TensorSpec("x", "float32", (None, None, 1))
Y = TensorSpec("y", "float32", (None, None, 1))
DEFAULT = Signature("serving_default", (X,), (Y,))
SIGNATURES = {"serving_default": DEFAULT}
MANY = 20_000  # keys in one object: 0.9 s of lookups on the fast path before the fix


@pytest.fixture(scope="module")
def client():
    model = Predictor("m", 1, {"serving_default": FakeBackend(DEFAULT, lambda inputs: {"y": inputs["x"] * 2})})
    registry = ModelRegistry.of([model])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's TestClient warns that it runs on httpx
        from starlette.testclient import TestClient

        with TestClient(app(registry, RestOptions())) as c:
            yield c
    registry.close()


def padding(count: int) -> str:
    return ",".join(f'"k{i}":0' for i in range(count))


# ----------------------------------------------------------------- objects with many keys


class ScannedObject:
    """Stands in for a pysimdjson object: ``obj[key]`` scans the keys in order, as simdjson does, and counts the
    keys it compares."""

    def __init__(self, count: int) -> None:
        self.position = {f"k{i}": i for i in range(count)}
        self.compared = 0

    def __len__(self) -> int:
        return len(self.position)

    def keys(self):
        return iter(self.position)

    def __getitem__(self, key):
        self.compared += self.position[key] + 1
        return 0


def test_an_object_with_many_keys_costs_the_fast_path_linear_work_and_gets_the_general_answer(client):
    """The fast paths compare keys in proportion to an object's keys (at most 64 per key here; the fix declines
    objects of more than FAST_FIELDS keys, whose lookups would cost n**2), and a body they decline is answered
    by the general parse exactly as before. Before the fix: 2 * 10**8 key comparisons for 20 000 keys."""
    for count in (3, 100, 1_000, MANY):
        scanned = ScannedObject(count)
        fields = json_depth.simd_fields(scanned)
        assert scanned.compared <= 64 * count, (count, scanned.compared)
        if count <= 3:  # the protocols' few keys: still the fast path
            assert fields == [(f"k{i}", 0) for i in range(count)]

    pad = padding(MANY)
    entry = '{"name":"x","shape":[1,3,1],"datatype":"FP32","data":[1,2,3]'
    kserve_bodies = [
        ('{"inputs":[' + entry + "}]," + pad + "}").encode(),  # the root object
        ('{"inputs":[' + entry + "," + pad + "}]}").encode(),  # an 'inputs' entry
    ]
    for body in kserve_bodies:
        assert kserve_codec.parse_numeric_body(body) is None  # declined: the general parse answers
        assert kserve_codec.parse_body(body)["inputs"][0]["data"] == [1, 2, 3]
        reply = client.post("/v2/models/m/infer", content=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0]
    tfs_bodies = [
        ('{"instances":[[[1.0],[2.0],[3.0]]],' + pad + "}").encode(),  # the root object
        ('{"inputs":{"x":[[[1.0],[2.0],[3.0]]],' + pad + "}}").encode(),  # the named inputs
    ]
    for body in tfs_bodies:
        assert tfs_json.parse_numeric_json(body, SIGNATURES) is None
        reply = client.post("/v1/models/m:predict", content=body)
        assert reply.status_code == 200, reply.text
        assert list(reply.json().values()) == [[[[2.0], [4.0], [6.0]]]]

    # an error in such a body: the general parse's text, as for the same body without the keys
    bad = ('{"inputs":[{"name":"x","shape":[1,2,1],"datatype":"FP32","data":[1,"a"]}],' + pad + "}").encode()
    plain = b'{"inputs":[{"name":"x","shape":[1,2,1],"datatype":"FP32","data":[1,"a"]}]}'
    refused, expected = client.post("/v2/models/m/infer", content=bad), client.post("/v2/models/m/infer", content=plain)
    assert refused.status_code == expected.status_code == 400 and refused.json() == expected.json()
    assert expected.json() == {"error": "input 'x': datatype FP32 expects JSON numbers"}

    # a normal body keeps the fast path, and so do TF Serving's named inputs of a model with many inputs
    assert kserve_codec.parse_numeric_body(('{"inputs":[' + entry + "}]}").encode()) is not None
    specs = tuple(TensorSpec(f"x{i}", "float32", (None, 1)) for i in range(40))
    wide = {"serving_default": Signature("serving_default", specs, (Y,))}
    named = ("{" + '"inputs":{' + ",".join(f'"x{i}":[[{i}.5]]' for i in range(40)) + "}}").encode()
    parsed = tfs_json.parse_numeric_json(named, wide)
    assert parsed is not None and float(parsed["inputs"]["x39"][0, 0]) == 39.5


# ------------------------------------------------------------------------ not UTF-8


KSERVE = '{"inputs":[{"name":"x","shape":[1,3,1],"datatype":"FP32","data":[1,2,3]}]}'
TFS = '{"instances":[[[1.0],[2.0],[3.0]]]}'
ROUTES = (
    ("/v2/models/m/infer", KSERVE, "failed to parse the request JSON buffer: "),
    ("/v1/models/m:predict", TFS, "JSON Parse error: "),
)


def not_utf8(detail: str) -> str:
    return f"the request body is not UTF-8 JSON: {detail}; JSON bodies must be UTF-8"


@pytest.mark.parametrize(("path", "text", "prefix"), ROUTES, ids=["kserve", "tfs"])
def test_a_body_that_is_not_utf8_is_a_400_that_says_so_on_both_rest_apis(client, path, text, prefix):
    """RFC 8259: JSON between systems is UTF-8. Before the fix ``json.loads(bytes)`` read UTF-16/32 bodies (200),
    while the depth pre-check and the true/false scan read their bytes as UTF-8: true/false passed as 1.0/0.0 for
    a float input, and nesting ~960 deep got past the limit of 100."""
    assert client.post(path, content=text.encode()).status_code == 200
    assert client.post(path, content=b"\xef\xbb\xbf" + text.encode()).status_code == 200  # a UTF-8 BOM: skipped

    def refused(body: bytes) -> str:
        reply = client.post(path, content=body)
        assert reply.status_code == 400, reply.text
        message = reply.json()["error"]
        assert list(reply.json()) == ["error"] and message.startswith(prefix + "the request body is not UTF-8 JSON: ")
        assert message.endswith("; JSON bodies must be UTF-8"), message
        return message.removeprefix(prefix)

    head = " ".join(f"0x{b:02x}" for b in text.encode("utf-16")[:8])
    assert refused(text.encode("utf-16")) == not_utf8(
        f"invalid start byte at offset 0 (received {head}..., which looks like UTF-16)"
    )
    head = " ".join(f"0x{b:02x}" for b in text.encode("utf-32")[:8])
    assert refused(text.encode("utf-32")) == not_utf8(
        f"invalid start byte at offset 0 (received {head}..., which looks like UTF-32)"
    )
    # without a byte order mark, ASCII text in UTF-16/32 is valid UTF-8 but holds NUL bytes, never part of JSON
    head = " ".join(f"0x{b:02x}" for b in text.encode("utf-16-le")[1:9])
    assert refused(text.encode("utf-16-le")) == not_utf8(
        f"a NUL byte at offset 1 (received {head}..., which looks like UTF-16-LE)"
    )
    assert "which looks like UTF-16-BE" in refused(text.encode("utf-16-be"))
    assert "which looks like UTF-32-LE" in refused(text.encode("utf-32-le"))
    # bytes that are not UTF-8 in a body otherwise UTF-8 (in a string, where the JSON parsers would reach them)
    body = text.encode().replace(b"[", b'["\xff\xfe",', 1)
    at = body.index(b"\xff")
    shown = " ".join(f"0x{b:02x}" for b in body[at : at + 8])
    assert refused(body) == not_utf8(f"invalid start byte at offset {at} (received {shown}...)")
    assert refused(b'{"\xed\xa0\x80":1}') == not_utf8(  # an encoded surrogate (json.loads(bytes) took it)
        "invalid continuation byte at offset 2 (received 0xed 0xa0 0x80 0x22 0x3a 0x31 0x7d)"
    )
    assert refused(text.encode()[:5] + b"\xc3") == not_utf8("unexpected end of data at offset 5 (received 0xc3)")

    # what the byte scans misread before: true/false for a float input, nesting past the limit
    bools = text.replace("[1,2,3]", "[true,false,2]").replace("[[[1.0],[2.0],[3.0]]]", "[[[true],[false],[2]]]")
    assert client.post(path, content=bools.encode()).status_code == 400
    assert "which looks like UTF-16" in refused(bools.encode("utf-16"))
    deep = "[" * 960 + "1" + "]" * 960
    crafted = '{"\u0122":0,' + text[1:].replace("[1,2,3]", deep).replace("[[[1.0],[2.0],[3.0]]]", f"[[[1.0],{deep}]]")
    assert "nesting depth exceeds 100" in client.post(path, content=crafted.encode()).json()["error"]
    assert "which looks like UTF-16" in refused(crafted.encode("utf-16"))


def test_the_binary_extension_header_must_be_utf8_too(client):
    header = '{"inputs":[{"name":"x","shape":[1,2,1],"datatype":"FP32","parameters":{"binary_data_size":8}}]}'
    raw = np.array([1, 2], np.float32).tobytes()
    good = client.post(
        "/v2/models/m/infer",
        content=header.encode() + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert good.status_code == 200, good.text
    utf16 = header.encode("utf-16")
    reply = client.post(
        "/v2/models/m/infer", content=utf16 + raw, headers={"Inference-Header-Content-Length": str(len(utf16))}
    )
    assert reply.status_code == 400 and reply.json()["error"].startswith(
        "failed to parse the request JSON buffer: the request body is not UTF-8 JSON: invalid start byte at offset 0"
    ), reply.text


def test_the_utf8_check_answers_the_same_whatever_its_passes(monkeypatch):
    """The check decodes a bounded number of bytes at a time: a character cut by a pass boundary is neither
    refused nor missed, and the offsets are the body's."""
    rng = random.Random(3)
    pieces = ["a", "é", "€", "😀", '"', "[", " "]
    bodies = [b"".join(rng.choice(pieces).encode() for _ in range(rng.randint(0, 40))) for _ in range(200)]
    bad = [b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80", b"\x00", b"\xf0\x9f\x98"]
    bodies += [
        body[:cut] + rng.choice(bad) + body[cut:] for body in bodies[:150] for cut in [rng.randint(0, len(body))]
    ]
    expected = [json_depth.utf8_problem(body) for body in bodies]
    for body, problem in zip(bodies, expected):
        try:
            body.decode("utf-8")
            assert (problem is None) == (b"\x00" not in body), body
        except UnicodeDecodeError as error:
            assert problem is not None and f"{error.reason} at offset {error.start} " in problem, (body, problem)
    for size in (1, 2, 3, 5, 8):
        monkeypatch.setattr(json_depth, "_PASS", size)
        assert [json_depth.utf8_problem(body) for body in bodies] == expected, size


def test_the_codecs_refuse_what_is_not_utf8_before_any_byte_scan(monkeypatch):
    """The check comes first: the depth scan never sees a UTF-16 body (it would misread it)."""
    scanned = []
    monkeypatch.setattr(kserve_codec, "exceeds_depth", lambda body: scanned.append(body) or False)
    monkeypatch.setattr(tfs_json, "exceeds_depth", lambda body: scanned.append(body) or False)
    for parse, text in ((kserve_codec.parse_body, KSERVE), (tfs_json.parse_json, TFS)):
        with pytest.raises(ServingError, match="the request body is not UTF-8 JSON"):
            parse(text.encode("utf-16"))
    assert scanned == []


# ------------------------------------------------------------------- the depth scan


def reference_depth(body: bytes) -> int:
    """The scan before the fix, kept as the reference: one pass over the whole body with int64 index arrays."""

    def escaped(data, positions):
        is_backslash = data == ord("\\")
        index = np.arange(data.size, dtype=np.int64)
        last_other = np.maximum.accumulate(np.where(is_backslash, -1, index))
        before = positions - 1
        run = np.where(before >= 0, before - last_other[np.maximum(before, 0)], 0)
        return (run & 1).astype(bool)

    step = np.zeros(256, np.int8)
    step[[ord("["), ord("{")]] = 1
    step[[ord("]"), ord("}")]] = -1
    data = np.frombuffer(body, np.uint8)
    steps = step.take(data)
    brackets = np.flatnonzero(steps)
    if not brackets.size:
        return 0
    quotes = np.flatnonzero(data == ord('"'))
    if quotes.size:
        quotes = quotes[~escaped(data, quotes)]
        brackets = brackets[(np.searchsorted(quotes, brackets) & 1) == 0]
    if not brackets.size:
        return 0
    return max(0, int(np.cumsum(steps[brackets], dtype=np.int64).max()))


def random_body(rng: random.Random) -> bytes:
    """Bytes that stress the scan: brackets, quotes and runs of backslashes, valid JSON or not."""
    pieces = [b"[", b"]", b"{", b"}", b'"', b"\\", b"\\\\", b"\\" * rng.randint(1, 9), b"a", b" ", b"1,", b"\xc3\xa9"]
    weights = [5, 4, 3, 2, 4, 3, 2, 1, 3, 2, 2, 1]
    return b"".join(rng.choices(pieces, weights, k=rng.randint(0, 120)))


def test_the_depth_scan_answers_as_before_in_memory_a_fraction_of_the_body(monkeypatch):
    """Before the fix the scan of a 8 MiB body held ~30x the body (~240 MiB) in index arrays; chunked, it holds
    a few MiB whatever the body, and answers what the single pass answered, across every chunk boundary."""
    body_size = 8 << 20
    for unit in (b'["\\\\"],', b'[""],', b"[1],"):  # with backslashes (the escape pass), without, numbers
        body = b'{"a":[' + unit * (body_size // len(unit)) + b"0]}"
        tracemalloc.start()
        try:
            assert json_depth.exceeds_depth(body) is False
            assert json_depth.json_depth(body) == 3
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < len(body) // 2, (unit, peak / len(body))  # the bound: half the body (8 MiB: 4 MiB)
        deep = body[:-3] + b"[" * 200 + b"]" * 200 + b"0]}"
        assert json_depth.exceeds_depth(deep) and json_depth.json_depth(deep) == 202

    rng = random.Random(5)
    bodies = [random_body(rng) for _ in range(400)]
    bodies += [b'"' + b"\\" * k + b'"[[' + b"\\" * j + b'"]' for k in range(7) for j in range(7)]
    big = b"".join(random_body(rng) for _ in range(4000))  # ~250 KB: several chunks at the real sizes
    assert json_depth.json_depth(big) == reference_depth(big)
    for chunk, pass_bytes in ((1, 1), (2, 3), (3, 5), (7, 16), (64, 64), (4096, 10_000)):  # boundaries everywhere
        monkeypatch.setattr(json_depth, "_CHUNK", chunk, raising=False)
        monkeypatch.setattr(json_depth, "_PASS", pass_bytes, raising=False)
        for body in bodies:
            expected = reference_depth(body)
            assert json_depth.json_depth(body) == expected, (chunk, body)
            limit = rng.randint(0, 4)
            assert json_depth.exceeds_depth(body, limit) == (expected > limit), (chunk, limit, body)
        if chunk >= 4096:
            assert json_depth.json_depth(big) == reference_depth(big)
            assert json_depth.json_depth(big.replace(b"\\", b"")) == reference_depth(big.replace(b"\\", b""))
