"""Property tests (Hypothesis) of the three request decoders, run as the server runs them
(``bench/fuzz/harness.py``): any input gives a valid request or a 4xx ServingError, never another
exception, and the decoded arrays never exceed the element budget. The default runs are small
(fast); the ``slow`` ones run the same properties on many more examples."""

import json
import math
import pathlib
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench" / "fuzz"))
import harness  # noqa: E402

from rnnkit_serving.codecs.tfs import grpc as grpc_codec  # noqa: E402
from rnnkit_serving.errors import Code  # noqa: E402

FAST = settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=3000, deadline=None, database=None, suppress_health_check=list(HealthCheck))

# ------------------------------------------------------------------------------- strategies

numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 0.5, 1e39, -1e39, 2**31, 2**63, 10**400]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8), st.just({"b64": "AAEC"}))


def nested_lists(leaf):
    """Lists nested 0-5 deep with mostly regular, sometimes ragged shapes."""

    @st.composite
    def build(draw):
        shape = draw(st.lists(st.integers(0, 6), min_size=0, max_size=5))
        if draw(st.booleans()):  # a regular tensor of that shape
            size = math.prod(shape)
            values = draw(st.lists(leaf, min_size=min(size, 64), max_size=min(size, 64))) if size else []
            if size > 64:
                values = (values * (size // 64 + 1))[:size]

            def nest(flat, dims):
                if not dims:
                    return flat[0] if flat else 0
                step = len(flat) // dims[0] if dims[0] else 0
                return [nest(flat[i * step : (i + 1) * step], dims[1:]) for i in range(dims[0])]

            return nest(values, shape)
        return draw(st.recursive(leaf, lambda inner: st.lists(inner, max_size=4), max_leaves=30))

    return build()


json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
)


def dumps(doc):
    return json.dumps(doc, allow_nan=True).encode()


@st.composite
def tfs_bodies(draw):
    kind = draw(st.sampled_from(["bytes", "json", "instances", "inputs", "named"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return dumps(draw(json_values))
    doc = {}
    if draw(st.booleans()):
        doc["signature_name"] = draw(st.sampled_from(["", "serving_default", "multi", "nope", 3, None]))
    if kind == "instances":
        doc["instances"] = draw(nested_lists(numbers))
    elif kind == "inputs":
        doc["inputs"] = draw(
            st.one_of(
                nested_lists(numbers), st.dictionaries(st.sampled_from(["x", "ids", "tag", "q"]), nested_lists(scalars))
            )
        )
    else:
        doc["instances"] = draw(
            st.lists(
                st.dictionaries(st.sampled_from(["x", "ids", "tag"]), nested_lists(scalars), max_size=3), max_size=3
            )
        )
    body = dumps(doc)
    if draw(st.integers(0, 4)) == 0:  # a byte flipped, cut or inserted
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(max_size=2)) + body[at + draw(st.integers(0, 2)) :]
    return body


@st.composite
def kserve_bodies(draw):
    kind = draw(st.sampled_from(["bytes", "json", "infer", "infer"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return dumps(draw(json_values))
    inputs = []
    for _ in range(draw(st.integers(0, 2))):
        item = {}
        for key, value in (
            ("name", st.sampled_from(["x", "ids", "y", 3])),
            ("shape", st.one_of(st.lists(st.integers(-1, 10**12), max_size=5), json_values)),
            ("datatype", st.sampled_from(["FP32", "FP64", "INT32", "BYTES", "BOOL", "FP16", "nope", 1])),
            ("data", st.one_of(nested_lists(scalars), json_values)),
            ("parameters", st.one_of(st.just({"binary_data_size": 4}), json_values)),
        ):
            if draw(st.integers(0, 5)) > 0:
                item[key] = draw(value)
        inputs.append(item)
    doc = {"inputs": inputs}
    for key, value in (
        (
            "outputs",
            st.one_of(st.lists(st.fixed_dictionaries({"name": st.sampled_from(["y", "z"])}), max_size=2), json_values),
        ),
        ("id", st.one_of(st.text(max_size=4), json_values)),
        (
            "parameters",
            st.one_of(
                st.fixed_dictionaries(
                    {"sequence_id": st.one_of(st.integers(-2, 5), st.text(max_size=3), json_values)},
                    optional={"sequence_start": json_values, "sequence_end": json_values},
                ),
                json_values,
            ),
        ),
    ):
        if draw(st.booleans()):
            doc[key] = draw(value)
    return dumps(doc)


TENSOR_FIELDS = ("float_val", "double_val", "int_val", "int64_val", "bool_val", "string_val", "half_val")


@st.composite
def predict_requests(draw):
    p = grpc_codec.protos()
    request = p.predict.PredictRequest()
    request.model_spec.name = draw(st.sampled_from(["m", "m", "", "other"]))
    request.model_spec.signature_name = draw(st.sampled_from(["", "serving_default", "multi", "nope"]))
    if draw(st.booleans()):
        request.model_spec.version.value = draw(st.integers(0, 3))
    for name in draw(st.lists(st.sampled_from(["x", "ids", "tag", "q"]), max_size=3, unique=True)):
        tensor = request.inputs[name]
        tensor.dtype = draw(st.one_of(st.sampled_from([1, 2, 3, 4, 6, 7, 9, 10, 19]), st.integers(0, 30)))
        dims = draw(
            st.lists(st.one_of(st.integers(-2, 6), st.integers(0, 2**40)), max_size=draw(st.sampled_from([4, 40])))
        )
        for size in dims:
            tensor.tensor_shape.dim.add(size=size)
        tensor.tensor_shape.unknown_rank = draw(st.integers(0, 9)) == 0
        if draw(st.booleans()):
            tensor.tensor_content = draw(st.binary(max_size=96))
        else:
            field = draw(st.sampled_from(TENSOR_FIELDS))
            if field in ("float_val", "double_val"):
                values = draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=20))
            elif field == "bool_val":
                values = draw(st.lists(st.booleans(), max_size=20))
            elif field == "string_val":
                values = draw(st.lists(st.binary(max_size=5), max_size=20))
            elif field == "int64_val":
                values = draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20))
            else:
                values = draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=20))
            getattr(tensor, field).extend(values)
    request.output_filter.extend(draw(st.lists(st.sampled_from(["y", "z", "y"]), max_size=2)))
    return request


# ------------------------------------------------------------------------------- properties


def test_the_harness_accepts_valid_requests_and_refuses_with_4xx():
    """The properties below can fail: the harness tells a good request from a malformed one."""
    assert harness.tfs_json_request(b'{"instances": [[[1, 2, 3, 4]]]}') is Code.OK
    assert harness.tfs_json_request(b'{"instances": [[[1, 2, 3]]]}') is Code.INVALID_ARGUMENT
    good = b'{"inputs": [{"name": "x", "shape": [1, 1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}'
    assert harness.kserve_json_request(good) is Code.OK
    over = b'{"inputs": [{"name": "x", "shape": [1, 2000, 4], "datatype": "FP32", "data": [1]}]}'
    assert harness.kserve_json_request(over) is Code.INVALID_ARGUMENT
    with pytest.raises(AssertionError, match="above the budget"):
        harness._within_budget({"x": [0] * (harness.BUDGET + 1)})
    with pytest.raises(AssertionError, match="got 500 INTERNAL"):
        from rnnkit_serving.errors import ServingError

        harness._outcome(lambda: (_ for _ in ()).throw(ServingError(Code.INTERNAL, "boom")))


@FAST
@given(tfs_bodies())
def test_tfs_json_decoder_never_fails_otherwise(body):
    harness.tfs_json_request(body)


@FAST
@given(kserve_bodies())
def test_kserve_json_decoder_never_fails_otherwise(body):
    harness.kserve_json_request(body)


@FAST
@given(predict_requests())
def test_grpc_predict_request_decoder_never_fails_otherwise(request):
    harness.grpc_request(request)


@FAST
@given(st.binary(max_size=300))
def test_grpc_serialized_bytes_never_fail_otherwise(data):
    harness.grpc_bytes(data)


@pytest.mark.slow
@LONG
@given(tfs_bodies())
def test_tfs_json_decoder_long(body):
    harness.tfs_json_request(body)


@pytest.mark.slow
@LONG
@given(kserve_bodies())
def test_kserve_json_decoder_long(body):
    harness.kserve_json_request(body)


@pytest.mark.slow
@LONG
@given(predict_requests())
def test_grpc_predict_request_decoder_long(request):
    harness.grpc_request(request)


# ------------------------------------------------------------------------- the JSON byte scans

# texts made of the letters of both literals, brackets and filler: literals, near misses ("tru", "fals"), runs of
# t and f beyond the scan's switch to a substring search, and bracket counts on both sides of the depth limit
scan_texts = st.lists(
    st.sampled_from([b"true", b"false", b"tru", b"fals", b"t", b"f", b"e", b"[", b"{", b"]", b"1.5", b" ", b"t" * 70]),
    max_size=160,
).map(b"".join)


@FAST
@given(scan_texts)
def test_the_bool_scan_agrees_with_a_substring_search(text):
    from rnnkit_serving.codecs.json_depth import holds_no_bools

    for scanned in (text, b" " * 4096 + text):  # below and above the size where the vector scan takes over
        assert holds_no_bools(scanned) == (b"true" not in scanned and b"false" not in scanned)


@FAST
@given(scan_texts)
def test_the_depth_precheck_never_misses_a_deep_text(text):
    from rnnkit_serving.codecs.json_depth import exceeds_depth, json_depth

    for scanned in (text, b" " * 4096 + text):
        assert exceeds_depth(scanned, 3) == (json_depth(scanned) > 3)
