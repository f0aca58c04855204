"""The pure parts of serving: REST JSON and gRPC TensorProto codecs, the model config reader
and input validation. No sockets, no runtime; one pinned error substring per malformed input."""

import json

import numpy as np
import pytest
from json_values import mixed_scalar

from rnnkit_serving.codecs.tfs.json_tensor import encode_tensor, parse_json
from rnnkit_serving.codecs.tfs.rest import decode_predict_request, encode_predict_response, metadata_json, status_json
from rnnkit_serving.config.model_config import parse_model_config
from rnnkit_serving.config.text_format import ConfigError
from rnnkit_serving.core.signature import DEFAULT_SIGNATURE, Limits, Manifest, Signature, TensorSpec, validate
from rnnkit_serving.core.status import VersionStatus
from rnnkit_serving.errors import HTTP_STATUS, Code, ServingError, wire_error

ONE = {
    "serving_default": Signature(
        "serving_default", (TensorSpec("x", "float32", (None, None, 2)),), (TensorSpec("y", "float32", (None, 2)),)
    )
}
TWO = {
    "serving_default": Signature(
        "serving_default",
        (TensorSpec("seq", "float32", (None, None, 2)), TensorSpec("n", "int32", (None,))),
        (TensorSpec("logits", "float32", (None, 2)),),
    ),
    "other": Signature("other", (TensorSpec("b", "bool", (None,)),), (TensorSpec("o", "float32", (None,)),)),
}
STR = {
    "serving_default": Signature(
        "serving_default", (TensorSpec("s", "str", (None,)),), (TensorSpec("s_bytes", "str", (None,)),)
    )
}
HALF = {"serving_default": Signature("serving_default", (TensorSpec("h", "float16", (None,)),), ())}


# ------------------------------------------------------------------------- REST: good forms


def test_row_format_single_input_stacks_instances():
    req = decode_predict_request({"instances": [[[1, 2], [3, 4]], [[5, 6], [7, 8.5]]]}, ONE)
    assert req.row_format and req.signature_name == "serving_default"
    np.testing.assert_array_equal(req.inputs["x"], np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8.5]]], np.float32))
    assert req.inputs["x"].dtype == np.float32


def test_row_format_named_instances_single_and_multi_input():
    one = decode_predict_request({"instances": [{"x": [[1, 2]]}, {"x": [[3, 4]]}]}, ONE)
    assert one.inputs["x"].shape == (2, 1, 2)
    two = decode_predict_request(
        {"instances": [{"seq": [[1, 2], [3, 4]], "n": 2}, {"seq": [[5, 6], [0, 0]], "n": 1}]}, TWO
    )
    assert two.inputs["seq"].shape == (2, 2, 2) and two.inputs["n"].tolist() == [2, 1]
    assert two.inputs["n"].dtype == np.int32


def test_columnar_format_plain_and_named_extra_keys_ignored():
    plain = decode_predict_request({"inputs": [[[0.1, 0.2]], [[0.3, 0.4]]]}, ONE)
    assert not plain.row_format and plain.inputs["x"].shape == (2, 1, 2)
    named = decode_predict_request({"inputs": {"seq": [[[1, 2]]], "n": [1], "ignored": "x"}}, TWO)
    assert set(named.inputs) == {"seq", "n"}


def test_signature_name_selects_signature():
    req = decode_predict_request({"signature_name": "other", "inputs": [True, False]}, TWO)
    assert req.signature_name == "other" and req.inputs["b"].dtype == np.bool_


def test_nan_infinity_tokens_and_b64_strings():
    doc = parse_json(b'{"inputs": [[[NaN, Infinity]], [[-Infinity, 1]]]}')
    x = decode_predict_request(doc, ONE).inputs["x"]
    assert np.isnan(x[0, 0, 0]) and x[0, 0, 1] == np.inf and x[1, 0, 0] == -np.inf
    s = decode_predict_request({"instances": ["ab", {"b64": "AAE="}]}, STR).inputs["s"]
    assert s.tolist() == [b"ab", b"\x00\x01"]


# ------------------------------------------------------------------------ REST: bad inputs

BAD_REQUESTS = [
    (b"", ONE, "JSON Parse error: The document is empty"),
    (b"{", ONE, "JSON Parse error:"),
    (b"[1, 2]", ONE, "Is not object"),
    (b'{"signature_name": 3, "inputs": 1}', ONE, "'signature_name' key must be a string value"),
    (b'{"signature_name": "foo", "inputs": 1}', ONE, 'Serving signature name: "foo" not found in signature def'),
    (b'{"inputs": 1, "instances": [1]}', ONE, "expecting only one of 'inputs' or 'instances' keys to exist"),
    (b'{"foo": 1}', ONE, "Missing 'inputs' or 'instances' key"),
    (b'{"instances": 1}', ONE, "Expecting 'instances' to be an list/array"),
    (b'{"instances": []}', ONE, "No values in 'instances' array"),
    (
        b'{"instances": [[[1, 2], [3, 4]], [[5, 6]]]}',
        ONE,
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 4 but got: 2",
    ),
    (b'{"instances": [[[1, 2, 3]], [[4], [5], [6]]]}', ONE, "Expecting shape [1, 3] but got: [3, 1]"),
    (b'{"instances": [[["1.0", 2]]]}', ONE, 'JSON Value: "1.0" Type: String is not of expected type: float'),
    (b'{"instances": [[[true, 2]]]}', ONE, "Type: True is not of expected type: float"),
    (b'{"inputs": [[1, 2], [3]]}', ONE, "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    (b'{"inputs": [[1, [2]]]}', ONE, "found at incorrect level"),
    (b'{"inputs": [[1, 2], 3]}', ONE, "JSON Value: 3 found at incorrect level: 2"),
    (
        b'{"instances": [{"seq": [[1, 2]]}]}',
        TWO,
        "Failed to process element: 0 of 'instances' list. JSON object: {\"seq\": [[1, 2]]} keys must be equal to: seq,n",
    ),
    (b'{"instances": [[[1, 2]]]}', TWO, "instances is a plain list, but expecting list of objects"),
    (b'{"instances": [{"seq": [[1, 2]], "n": 1}, [[1, 2]]]}', TWO, "Expecting object but got list at item 1"),
    (b'{"instances": [[[1, 2]], {"x": [[1, 2]]}]}', ONE, "Expecting value/list but got object at item 1"),
    (b'{"inputs": {"seq": [[[1, 2]]]}}', TWO, "Missing named input: n in 'inputs' object."),
    (b'{"inputs": [[[1, 2]]]}', TWO, "inputs is a plain value/list, but expecting an object"),
    (
        b'{"inputs": {"seq": [[[1, 2]]], "n": [1.5]}}',
        TWO,
        "JSON Value: 1.5 Type: Number is not of expected type: int32",
    ),
    (
        b'{"inputs": {"seq": [[[1, 2]]], "n": [2.0]}}',
        TWO,
        "JSON Value: 2.0 Type: Number is not of expected type: int32",
    ),
    (b'{"inputs": {"seq": [[[1, 2]]], "n": [4294967296]}}', TWO, "is not of expected type: int32"),
    (b'{"signature_name": "other", "inputs": [1]}', TWO, "Type: Number is not of expected type: bool"),
    (b'{"instances": [{"b64": "@@@"}]}', STR, "Unable to base64 decode"),
    (b'{"instances": [3]}', STR, "is not of expected type: string"),
]


@pytest.mark.parametrize("body,signatures,message", BAD_REQUESTS, ids=[m[:40] for _, _, m in BAD_REQUESTS])
def test_malformed_rest_requests_are_invalid_argument(body, signatures, message):
    with pytest.raises(ServingError) as caught:
        decode_predict_request(parse_json(body), signatures)
    assert message in caught.value.message
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert wire_error(caught.value)[2] == 400


def test_half_precision_json_is_unimplemented_501():
    with pytest.raises(ServingError, match="to type: half") as caught:
        decode_predict_request({"instances": [1.0]}, HALF)
    assert wire_error(caught.value)[2] == 501


# ----------------------------------------------------------------------- REST: responses


def test_float_printing_follows_tf_serving():
    x = np.array([0.1, 3.0, 1e7, 1e-5, np.nan, np.inf, -np.inf, 123456789, 1 / 3], np.float32)
    assert encode_tensor(x) == "[0.1,3.0,1e+07,1e-05,NaN,Infinity,-Infinity,123456792.0,0.333333343]"
    assert encode_tensor(np.float64(1 / 3)) == "0.33333333333333331"
    assert encode_tensor(np.array([[1, 2]], np.int64)) == "[[1,2]]"
    assert encode_tensor(np.array([True, False])) == "[true,false]"
    assert encode_tensor(np.zeros((2, 0), np.float32)) == "[[], []]"


def test_row_and_columnar_responses():
    y = {"y": np.array([[1.5, 2.0], [3.0, 4.0]], np.float32)}
    assert json.loads(encode_predict_response(y, True)) == {"predictions": [[1.5, 2.0], [3.0, 4.0]]}
    assert json.loads(encode_predict_response(y, False)) == {"outputs": [[1.5, 2.0], [3.0, 4.0]]}
    two = {"a": np.array([[1.0], [2.0]], np.float32), "b": np.array([7, 8])}
    assert json.loads(encode_predict_response(two, True)) == {
        "predictions": [{"a": [1.0], "b": 7}, {"a": [2.0], "b": 8}]
    }
    assert json.loads(encode_predict_response(two, False)) == {"outputs": {"a": [[1.0], [2.0]], "b": [7, 8]}}


def test_bytes_outputs_are_b64_only_when_named_bytes():
    s = np.array([b"ab"], dtype=object)
    assert json.loads(encode_predict_response({"s_bytes": s}, True)) == {"predictions": [{"b64": "YWI="}]}
    assert json.loads(encode_predict_response({"s": s}, True)) == {"predictions": ["ab"]}


@pytest.mark.parametrize(
    "outputs,message",
    [
        ({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))}, "Tensor name: b has inconsistent batch size: 3 expecting: 2"),
        ({"a": np.float32(1.0)}, "Tensor name: a has no shape information"),
    ],
)
def test_row_responses_need_a_common_batch(outputs, message):
    with pytest.raises(ServingError, match=message):
        encode_predict_response(outputs, True)


def test_status_and_metadata_json_shapes():
    status = json.loads(status_json([VersionStatus(2, "AVAILABLE"), VersionStatus(1, "END", "NOT_FOUND", "gone")]))
    assert status["model_version_status"][0] == {
        "version": "2",
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }
    assert status["model_version_status"][1]["status"]["error_code"] == "NOT_FOUND"
    meta = json.loads(metadata_json("m", 3, ONE))
    assert meta["model_spec"] == {"name": "m", "signature_name": "", "version": "3"}
    x = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT" and [d["size"] for d in x["tensor_shape"]["dim"]] == ["-1", "-1", "2"]


def test_http_status_table_matches_tf_serving():
    assert HTTP_STATUS[Code.NOT_FOUND] == 404 and HTTP_STATUS[Code.DEADLINE_EXCEEDED] == 504
    assert HTTP_STATUS[Code.FAILED_PRECONDITION] == 400 and HTTP_STATUS[Code.RESOURCE_EXHAUSTED] == 429
    code, message, status = wire_error(KeyError("boom"))
    assert code is Code.INTERNAL and status == 500 and "boom" in message


# ------------------------------------------------------------------------- validation

SIG = ONE["serving_default"]


def test_the_sequence_length_limit_holds_for_token_inputs_too():
    """(batch, time) integer token ids are sequences as much as (batch, time, features) are: the same limit holds
    (it held for rank >= 3 only, so an Embedding model's token ids could be as long as the element budget)."""
    tokens = Signature("tokens", (TensorSpec("ids", "int32", (None, None)),), (TensorSpec("y", "float32", (None, 2)),))
    with pytest.raises(ServingError, match=r"input 'ids' has 9 time steps, above the server limit 8 \(--max_seq"):
        validate(tokens, {"ids": np.zeros((1, 9), np.int32)}, Limits(max_sequence_length=8))
    assert validate(tokens, {"ids": np.zeros((1, 8), np.int32)}, Limits(max_sequence_length=8))["ids"].shape == (1, 8)
    # a fixed axis 1, or (batch, n) floats (a vector, as Triton's identity models take), is not time
    fixed = Signature("fixed", (TensorSpec("f", "int32", (None, 9)),), (TensorSpec("y", "float32", (None, 2)),))
    assert validate(fixed, {"f": np.zeros((1, 9), np.int32)}, Limits(max_sequence_length=8))["f"].shape == (1, 9)
    vector = Signature("vector", (TensorSpec("v", "float32", (None, None)),), (TensorSpec("y", "float32", (None,)),))
    assert validate(vector, {"v": np.zeros((1, 9), np.float32)}, Limits(max_sequence_length=8))["v"].shape == (1, 9)


@pytest.mark.parametrize(
    "inputs,limits,message",
    [
        ({"y": np.zeros((1, 1, 2))}, Limits(), "expects inputs ['x']; missing ['x'], unexpected ['y']"),
        ({"x": np.zeros((1, 2))}, Limits(), "input 'x' expects rank 3 with shape [-1, -1, 2], received shape [1, 2]"),
        (
            {"x": np.zeros((1, 1, 3))},
            Limits(),
            "input 'x' expects shape [-1, -1, 2], received [1, 1, 3] (axis 2 must be 2)",
        ),
        ({"x": np.zeros((1, 1, 2), bool)}, Limits(), "input 'x' expects dtype float32, received bool"),
        ({"x": np.array([[["a", "b"]]])}, Limits(), "expects dtype float32, received str"),
        ({"x": np.zeros((0, 1, 2))}, Limits(), "input 'x' has an empty axis 0"),
        (
            {"x": np.zeros((5, 1, 2))},
            Limits(max_batch_size=4),
            "batch size 5, above the server limit 4 (--max_batch_size)",
        ),
        ({"x": np.zeros((1, 9, 2))}, Limits(max_sequence_length=8), "9 time steps, above the server limit 8"),
        ([1, 2], Limits(), "inputs must be a mapping"),
    ],
)
def test_validation_names_input_expected_and_received(inputs, limits, message):
    with pytest.raises(ServingError) as caught:
        validate(SIG, inputs, limits)
    assert message in caught.value.message and caught.value.code is Code.INVALID_ARGUMENT


def test_validation_converts_within_kind_and_checks_batch_agreement():
    out = validate(SIG, {"x": np.zeros((1, 1, 2), np.float64)})
    assert out["x"].dtype == np.float32
    with pytest.raises(ServingError, match="disagree on the batch size: 2 vs 3"):
        validate(TWO["serving_default"], {"seq": np.zeros((2, 1, 2)), "n": np.zeros(3, np.int32)})
    with pytest.raises(ServingError, match="expects dtype int32, received float64"):
        validate(TWO["serving_default"], {"seq": np.zeros((2, 1, 2)), "n": np.zeros(2)})


def test_manifest_builds_the_step_signature():
    data = {
        "format": 1,
        "model_name": "m",
        "version": 1,
        "formats": ["onnx"],
        "inputs": [{"name": "x", "dtype": "float32", "shape": [None, None, 3]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 2]}],
        "signatures": ["serving_default", "step"],
        "streaming": {
            "streamable": True,
            "states": [{"layer": "l", "input": "l_h_in", "output": "l_h_out", "units": 4}],
        },
    }
    step = Manifest.from_json(data).signatures["step"]
    assert step.input_names == ["x", "l_h_in"] and step.output_names == ["y", "l_h_out"]
    with pytest.raises(ValueError, match="unsupported manifest format"):
        Manifest.from_json({**data, "format": 2})


# ---------------------------------------------------------------------- model config file


def test_model_config_reads_what_export_writes_plus_labels():
    text = """
    # comment
    model_config_list {
      config {
        name: "a"
        base_path: "/models/a"
        model_platform: "tensorflow"
        model_version_policy { latest { num_versions: 1 } }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
      }
      config { name: 'b' base_path: "/models/b" }
    }"""
    a, b = parse_model_config(text)
    assert (a.name, a.base_path, a.version_labels) == ("a", "/models/a", {"stable": 1, "canary": 2})
    assert (b.name, b.version_labels) == ("b", {})


@pytest.mark.parametrize(
    "text,message",
    [
        ('model_config_list { config { name: "a" } }', "expected exactly one `base_path`"),
        ('model_config_list { config { name: "a" base_path: "/x" }', "missing '}'"),
        ("custom_model_config { }", "only ModelConfigList is supported"),
        (
            'model_config_list { config { name: "a" base_path: "/x" } config { name: "a" base_path: "/y" } }',
            "repeated: ['a']",
        ),
        ('model_config_list { config { name: "a" base_path: "/x" } } $', "cannot parse text"),
        ("model_config_list { }", "has no `config` entries"),
    ],
)
def test_model_config_errors(text, message):
    with pytest.raises(ConfigError, match=None) as caught:
        parse_model_config(text, "models.config")
    assert message in str(caught.value) and "models.config" in str(caught.value)


# ----------------------------------------------------------------------------- gRPC codec


def test_tensor_proto_round_trips_typed_and_tensor_content():
    import tensorflow as tf

    from rnnkit_serving.codecs.tfs.grpc import array_to_tensor, tensor_to_array

    for array in [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array([[1, 2]], np.int64),
        np.array([True, False]),
        np.array([1, 2], np.int32),
        np.float16([1.5, 2]),
        np.array([b"a", b"bc"], dtype=object),
        np.arange(4, dtype=np.float64),
    ]:
        for content in (False, True):
            proto = array_to_tensor(array, content)
            assert bool(proto.tensor_content) == (content and array.dtype != object)
            back = tensor_to_array(proto)
            assert back.dtype == array.dtype and back.tolist() == array.tolist()
            assert tf.make_ndarray(proto).tolist() == array.tolist()
    assert array_to_tensor(np.array([0.5], np.float32)).float_val == [0.5]  # replies use typed fields
    # requests as the official client builds them: tensor_content, and typed values repeated to fill the shape
    assert tensor_to_array(tf.make_tensor_proto(np.ones((2, 3, 4), np.float32))).shape == (2, 3, 4)
    assert tensor_to_array(tf.make_tensor_proto(1.5, shape=[2, 2])).tolist() == [[1.5, 1.5], [1.5, 1.5]]


def _request(**inputs):
    from rnnkit_serving.codecs.tfs.grpc import array_to_tensor, protos

    request = protos().predict.PredictRequest()
    request.model_spec.name = "m"
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(value if not isinstance(value, np.ndarray) else array_to_tensor(value))
    return request


def test_grpc_predict_request_errors():
    from rnnkit_serving.codecs.tfs.grpc import decode_predict_request, model_spec, protos

    sig = TWO["serving_default"]
    seq, n = np.zeros((1, 1, 2), np.float32), np.zeros(1, np.int32)
    with pytest.raises(ServingError, match=r"input size does not match signature: 1!=2 len\({seq}\) != len\({n,seq}\)"):
        decode_predict_request(_request(seq=seq), sig)
    with pytest.raises(
        ServingError, match="input tensor alias not found in signature: q. Inputs expected to be in the set"
    ):
        decode_predict_request(_request(seq=seq, q=n), sig)
    bad = protos().tensor.TensorProto(dtype=1, tensor_content=b"abc")
    bad.tensor_shape.dim.add(size=2)
    with pytest.raises(ServingError, match="tensor parsing error: n"):
        decode_predict_request(_request(seq=seq, n=bad), sig)
    request = _request(seq=seq, n=n)
    request.output_filter.append("nope")
    with pytest.raises(ServingError, match="output tensor alias not found in signature: nope"):
        decode_predict_request(request, sig)
    request.output_filter[:] = ["logits", "logits"]
    with pytest.raises(ServingError, match="duplicate output tensor alias: logits"):
        decode_predict_request(request, sig)
    request.output_filter[:] = []
    decoded = decode_predict_request(request, sig)
    inputs, wanted = decoded.inputs, decoded.outputs
    assert set(inputs) == {"seq", "n"} and wanted == ["logits"]
    with pytest.raises(ServingError, match="ModelSpec has no name specified"):
        model_spec(protos().predict.PredictRequest().model_spec)
    request.model_spec.version_label = "stable"
    assert model_spec(request.model_spec).label == "stable"


def test_grpc_metadata_field_checks():
    from tensorflow_serving.apis import get_model_metadata_pb2

    from rnnkit_serving.codecs.tfs.grpc import metadata_response

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    with pytest.raises(ServingError, match="must specify at least one metadata_field"):
        metadata_response(request, "m", 1, ONE)
    request.metadata_field.append("other")
    with pytest.raises(ServingError, match="Metadata field other is not supported"):
        metadata_response(request, "m", 1, ONE)
    request.metadata_field[:] = ["signature_def"]
    response = metadata_response(request, "m", 1, ONE)
    defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(defs)
    assert defs.signature_def["serving_default"].inputs["x"].dtype == 1


def test_tfs_numeric_json_converted_in_c_equals_the_checked_path_value_for_value_and_error_for_error():
    """Issue 22: TF Serving JSON rows and columns of numbers, in a body without true/false, are converted
    by numpy in C instead of a per-value Python check (0.44 -> ~0.1 ms for one 100x64 FP32 row). Both paths
    give the same array bytes, or TF Serving's same error text, on random nested data with ragged rows,
    floats for ints, out-of-range, non-numeric and huge values."""
    import random

    rng = random.Random(11)
    dtypes = ("float32", "float64", "int64", "int8", "uint8", "int32")

    odd = [2**60, -(2**70), 2**64, 1e39, "a", None, [1], 2**54 + 1, 0.5, {"b64": "YQ=="}]

    def value():
        return mixed_scalar(rng, odd)

    def tensor(shape):
        if not shape:
            return value()
        rows = [tensor(shape[1:]) for _ in range(shape[0])]
        if rng.random() < 0.04 and rows:  # a ragged row
            rows[-1] = tensor([max(0, shape[1] - 1), *shape[2:]]) if len(shape) > 1 else [value()]
        return rows

    def outcome(body, signatures, fast):
        try:
            request = decode_predict_request(json.loads(body), signatures, None, fast)
        except ServingError as error:
            return ("error", error.code, error.message)
        return ("ok", {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in request.inputs.items()})

    fast_hits = 0
    for _ in range(2000):
        dtype = rng.choice(dtypes)
        shape = [rng.randint(1, 3), rng.randint(1, 4), rng.randint(1, 3)][: rng.randint(1, 3)]
        signatures = {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, (TensorSpec("x", dtype, (None,) * 3),), ())}
        form = rng.choice(("instances", "inputs", "named"))
        data = tensor(shape)
        doc = {"instances": data} if form == "instances" else {"inputs": data if form == "inputs" else {"x": data}}
        body = json.dumps(doc)
        assert outcome(body, signatures, True) == outcome(body, signatures, False), body
        fast_hits += outcome(body, signatures, True)[0] == "ok"
    assert fast_hits > 400  # the comparison covered accepted bodies, not only refusals


def test_tfs_bodies_parsed_with_numeric_arrays_decode_as_the_general_parse_does():
    """Float tensors parsed by pysimdjson straight into arrays (parse_numeric_json) decode to the same array
    bytes, or TF Serving's same error, as parse_json and the checked path, on random bodies: rows, columns and
    named inputs; ragged rows, a list where a number belongs ([1, [2]]) and the reverse, strings holding "[",
    escaped strings, a second input, repeated keys, huge, out-of-range and non-numeric values; the element budget
    applies alike. The numeric parse must take a good share of them."""
    import random

    from rnnkit_serving.codecs.json_depth import holds_no_bools
    from rnnkit_serving.codecs.tfs.json_tensor import parse_numeric_json
    from rnnkit_serving.core.signature import ElementBudget

    rng = random.Random(5)
    odd = [2**60, -(2**70), 2**54 + 1, 1e39, 1e300, "a", "[", None, True, [1], [], {"b64": "YQ=="}, -0.0]

    def scalar():
        return mixed_scalar(rng, odd) if rng.random() < 0.08 else rng.uniform(-1e3, 1e3)

    def tensor(shape):
        if not shape:
            return scalar()
        rows = [tensor(shape[1:]) for _ in range(shape[0])]
        roll = rng.random()
        if roll < 0.05 and rows:  # a ragged row
            rows[-1] = tensor([max(0, shape[1] - 1), *shape[2:]]) if len(shape) > 1 else [scalar()]
        elif roll < 0.15 and len(rows) > 1 and isinstance(rows[-1], list) and rows[-1]:
            # ragged rows that still hold as many values (and lists) in all
            moved = rng.randrange(len(rows) - 1)
            rows[moved] = [*rows[moved], rows[-1].pop()]
        return rows

    def outcome(doc, signatures, numbers_only):
        try:
            request = decode_predict_request(doc, signatures, ElementBudget(40), numbers_only)
        except ServingError as error:
            return ("error", error.code, error.message)
        return ("ok", {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in request.inputs.items()})

    numeric = 0
    for _ in range(2000):
        specs = [TensorSpec("x", rng.choice(("float32", "float32", "float64", "int64")), (None,) * 3)]
        if rng.random() < 0.15:
            specs.append(TensorSpec("y", "float32", (None, None)))
        signatures = {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, tuple(specs), ())}
        shape = [rng.randint(1, 3), rng.randint(1, 4), rng.randint(1, 3)][: rng.randint(1, 3)]
        form = rng.choice(("instances", "inputs", "named"))
        data = tensor(shape)
        doc = {"instances": data} if form == "instances" else {"inputs": data if form == "inputs" else {"x": data}}
        if rng.random() < 0.02:  # a key beside the tensor nested deeper than JSON's limit of 100: the depth error
            deep: list = []
            for _ in range(100):
                deep = [deep]
            doc["note"] = deep
        if form == "named" and len(specs) == 2:
            doc["inputs"]["y"] = tensor([1, 2])
        if rng.random() < 0.1:
            doc["signature_name"] = rng.choice([DEFAULT_SIGNATURE, "[x]", 3])
        body = json.dumps(doc)
        if rng.random() < 0.05:
            body = body.replace("{", '{"inputs": [1], ', 1)  # a repeated key
        if rng.random() < 0.05:
            body = body.replace("{", '{"note": "\\u005b[", ', 1)  # an escaped "[" beside a plain one
        raw = body.encode()
        fast = parse_numeric_json(raw, signatures)
        if fast is None:
            continue
        numeric += 1
        assert outcome(fast, signatures, False) == outcome(parse_json(raw), signatures, holds_no_bools(raw)), body
    assert numeric > 600
    from rnnkit_serving.codecs.json_depth import MAX_JSON_DEPTH, json_depth

    one = {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, (TensorSpec("x", "float32", (None, None)),), ())}
    for wraps in (97, 98, 99):  # the depth is taken from the structure: exactly the byte scan's limit
        deep: list = []
        for _ in range(wraps):
            deep = [deep]
        for doc in ({"instances": [[1.0]], "note": deep}, {"inputs": {"x": [[1.0]], "note": {"a": deep}}}):
            raw = json.dumps(doc).encode()
            assert (parse_numeric_json(raw, one) is None) == (json_depth(raw) > MAX_JSON_DEPTH), (wraps, doc.keys())
    three = {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, (TensorSpec("x", "float32", (None, None, None)),), ())}
    narrow = json.dumps({"instances": [[[0.5]] * 200]}).encode()  # 200 lists of one number each
    wide = json.dumps({"instances": [[[0.5] * 8] * 200]}).encode()
    assert parse_numeric_json(narrow, three) is None  # numpy converts it in C; the walk would be a step per number
    assert parse_numeric_json(wide, three)["instances"].shape == (1, 200, 8)
    nul_key = b'{"a\\u0000b": 1, "instances": [[1.0]]}'  # pysimdjson cannot look this key up: the general parse
    assert parse_numeric_json(nul_key, signatures) is None and "a\x00b" in parse_json(nul_key)


def test_tfs_a_bool_among_numbers_is_still_refused_on_the_fast_path():
    from rnnkit_serving.codecs.json_depth import holds_no_bools

    assert not holds_no_bools(b'{"instances": [1.0, true]}') and holds_no_bools(b'{"instances": [1.0, 2]}')
    signatures = {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, (TensorSpec("x", "float32", (None, 2)),), ())}
    body = b'{"instances": [[1.0, true]]}'
    with pytest.raises(ServingError, match="JSON Value: true Type: True is not of expected type: float"):
        decode_predict_request(json.loads(body), signatures, None, holds_no_bools(body))


def test_tfs_float32_text_written_column_by_column_equals_the_per_value_writer():
    """Issue 22: float32 outputs are written by numpy column by column (100x64: 7.1 -> ~2 ms) with
    exactly the text of the per-value writer (%g when it reads back, else %.9g, '.0' on integers): a
    million values over every magnitude the column writer takes, integers, short decimals, neighbours of
    powers of ten and exact ties at the 6th and 9th digit; values outside its range take the per-value path."""
    from rnnkit_serving.codecs.tfs import json_tensor

    rng = np.random.default_rng(5)
    log_uniform = 10.0 ** rng.uniform(-13, 5, 600_000) * rng.choice([-1, 1], 600_000)
    bits = rng.integers(0x2B8CBCCC, 0x47C35000, 300_000, dtype=np.uint32).view(np.float32)  # 1e-12 .. 1e5
    powers = np.array([10.0**k for k in range(-12, 5)], np.float32)
    near = np.concatenate([np.nextafter(powers, np.float32(0)), powers, np.nextafter(powers, np.float32(1e9))])
    shorts = np.concatenate([np.arange(-2000, 2000) / 1000, np.arange(0, 99999, 7), np.arange(1, 500) * 1e-7])
    ties = np.array([131072.5, 1048.5625, 0.0009765625, 1.00000525, 12345.6752, 2.5e-07], np.float64)
    specials = np.array([0.0, -0.0, 1e-13, -99999.99, 0.1, 0.3, 1 / 3], np.float64)
    values = np.concatenate([log_uniform, bits, near, shorts, ties, specials]).astype(np.float32)
    magnitude = np.abs(values.astype(np.float64))
    values = values[(magnitude < 1e5) & ((magnitude >= 1e-13) | (magnitude == 0))]
    assert values.size > 900_000
    for chunk in np.array_split(values, 40):
        shaped = chunk.reshape(-1, 1, 2) if chunk.size % 2 == 0 else chunk
        fast = json_tensor._float32_json(shaped)
        assert fast is not None and fast == json_tensor.nest(json_tensor.element_strings(shaped, ""), shaped.shape)
    outside = np.array([[1e-20, 0.5], [3e38, np.nan]], np.float32)
    assert json_tensor._float32_json(outside) is None
    assert encode_tensor(outside) == "[[1e-20,0.5],[3e+38,NaN]]"
    assert encode_tensor(np.array([[[1.5]], [[-2.0]]], np.float32)) == "[[[1.5]],[[-2.0]]]"
