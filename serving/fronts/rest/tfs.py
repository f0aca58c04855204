"""The TF Serving REST v1 routes: ``:predict`` (``:classify``/``:regress`` refused with TF Serving's
texts), model status and metadata.

Routing reproduces TF Serving's two regexes (case-insensitive, on the raw path), so every path
TF Serving accepts works here and every other ``/v1/...`` path gets its ``Malformed request``
error. Bodies are decoded by :mod:`rnnkit_serving.codecs.tfs.rest` and run through the
:class:`~rnnkit_serving.dispatch.Dispatch`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from rnnkit_serving.codecs.json_depth import holds_no_bools
from rnnkit_serving.codecs.tfs import json_tensor as tfs_json
from rnnkit_serving.codecs.tfs import rest as rest_codec
from rnnkit_serving.core.identifiers import parse_version
from rnnkit_serving.core.signature import DEFAULT_SIGNATURE, Signature
from rnnkit_serving.dispatch import Call, Dispatch, ModelView, Target
from rnnkit_serving.errors import invalid_argument
from rnnkit_serving.fronts.rest.http_io import InWorker, RestOptions, json_response, read_body

_POST = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
_GET = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)
VERBS = ("predict", "classify", "regress")


class TfsRoutes:
    def __init__(
        self,
        dispatch: Dispatch,
        options: RestOptions,
        in_worker: InWorker,
    ) -> None:
        self.dispatch = dispatch
        self.options = options
        self.in_worker = in_worker

    async def handle(self, request: Request, path: str, call: Call) -> Response:
        method = "GET" if request.method == "HEAD" else request.method  # uvicorn sends a HEAD answer's head only
        post = _POST.fullmatch(path) if method == "POST" else None
        get = _GET.fullmatch(path) if method == "GET" else None
        if post is not None:
            name, version, label, verb = post.groups()
            if verb not in VERBS:  # the path matches case-insensitively, the verb does not
                raise invalid_argument(f"Malformed request: {method} {path}")
            target = Target(unquote(name), _int(version), _label(label))
            call.model, call.api = self.dispatch.metric_name(target.name), verb
            body = await read_body(request, self.options.max_body_bytes)
            return await self.in_worker(lambda: self._post(target, verb, body), (call.model, len(body)))
        if get is not None:
            name, version, label, metadata = get.groups()
            if name is None:
                raise invalid_argument("Missing model name in request.")
            target = Target(unquote(name), _int(version), _label(label))
            call.model, call.api = self.dispatch.metric_name(target.name), "metadata" if metadata else "status"
            if metadata:
                return self._metadata(target)
            # TF Serving's status path only looks at a numeric version: a label lists every version.
            return json_response(rest_codec.status_json(self.dispatch.status(target.name, target.version)))
        raise invalid_argument(f"Malformed request: {method} {path}")

    def _metadata(self, target: Target) -> Response:
        def render(model: ModelView) -> str:
            runtime = {"backend": model.backend_name, "variant": model.variant, "signatures": model.describe()}
            return rest_codec.metadata_json(model.name, model.version, model.signatures, runtime)

        return json_response(self.dispatch.inspect(target, render))

    def _post(self, target: Target, verb: str, body: bytes) -> Response:
        def decode(model: ModelView) -> rest_codec.RestPredictRequest:
            budget = self.dispatch.element_budget(model)
            if verb == "predict":  # float tensors straight into arrays, or None: the general parse
                numeric = tfs_json.parse_numeric_json(body, model.signatures)
                if numeric is not None:
                    return rest_codec.decode_predict_request(numeric, model.signatures, budget)
            doc = tfs_json.parse_json(body)
            if verb != "predict":
                _refuse_verb(verb, doc, model.signatures)
            return rest_codec.decode_predict_request(doc, model.signatures, budget, holds_no_bools(body))

        answer = self.dispatch.predict(target, decode)
        return json_response(rest_codec.encode_predict_response(answer.outputs, answer.request.row_format))


def _int(text: str | None) -> int | None:
    return parse_version(text) if text is not None else None


def _label(text: str | None) -> str | None:
    return unquote(text) if text is not None else None


def _refuse_verb(verb: str, doc: Any, signatures: Mapping[str, Signature]) -> None:
    """TF Serving's answer to ``:classify``/``:regress``: rnnkit models take tensors, not tf.Example."""
    name = doc.get("signature_name", "") if isinstance(doc, dict) else ""
    if not isinstance(name, str):  # as :predict answers it (an object here was a 500: unhashable)
        raise invalid_argument(f"'signature_name' key must be a string value. Received: {tfs_json.dump(name)}")
    signature = signatures.get(name) or signatures[DEFAULT_SIGNATURE]
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    kind = "classification" if verb == "classify" else "regression"
    raise invalid_argument(
        f"No {kind} inputs found in SignatureDef: rnnkit models take tensors, not tf.Example; use :predict"
    )
