"""The KServe v2 (Open Inference Protocol) REST routes: health, server and model metadata, readiness
and ``infer`` (JSON or the binary tensor extension); requests carrying Triton's ``sequence_id``
(or the ``x-rnnkit-sequence-id`` header) stream through the session store.

Bodies are decoded by :mod:`rnnkit_serving.codecs.kserve.rest` and run through the
:class:`~rnnkit_serving.dispatch.Dispatch`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from rnnkit_serving.codecs.json_depth import holds_no_bools
from rnnkit_serving.codecs.kserve import rest as kserve_codec
from rnnkit_serving.codecs.kserve import sequence as kserve_sequence
from rnnkit_serving.core.identifiers import parse_version
from rnnkit_serving.core.package import package_version
from rnnkit_serving.dispatch import Call, Dispatch, ModelView, Target
from rnnkit_serving.errors import Code, invalid_argument, not_found
from rnnkit_serving.fronts.rest.forward import Relay
from rnnkit_serving.fronts.rest.http_io import (
    BinaryInferResponse,
    InWorker,
    RestOptions,
    header_values,
    json_response,
    read_body,
)

# the headers an infer reads: the binary extension's JSON header length, rnnkit's sequence id
_INFER_HEADERS = (kserve_codec.HEADER_LENGTH.lower().encode(), kserve_sequence.SEQUENCE_HEADER.lower().encode())
_V2_MODEL = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer))?")


class KServeRoutes:
    def __init__(
        self,
        dispatch: Dispatch,
        options: RestOptions,
        in_worker: InWorker,
        relay: Relay | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.options = options
        self.in_worker = in_worker
        self.relay = relay  # --server_workers N: chunks of another worker's sequence go there

    async def handle(self, request: Request, path: str, call: Call) -> Response:
        method = "GET" if request.method == "HEAD" else request.method  # uvicorn sends a HEAD answer's head only
        if method == "GET" and path in ("/v2", "/v2/"):
            return json_response(kserve_codec.server_metadata_json(package_version()))
        if method == "GET" and path == "/v2/health/live":
            return json_response('{"live": true}')
        if method == "GET" and path == "/v2/health/ready":
            ready = self.dispatch.available()
            return json_response(f'{{"ready": {str(ready).lower()}}}', 200 if ready else 400)
        match = _V2_MODEL.fullmatch(path)
        if match is None:
            raise not_found(f"Not found: {method} {path} is not a KServe v2 endpoint")
        target = Target(unquote(match.group(1)), _version(match.group(2)))
        action = match.group(3)
        call.model = self.dispatch.metric_name(target.name)
        if method == "GET" and action == "ready":
            call.api = "ready"
            call.outcome = self.dispatch.readiness(target)
            ready = call.outcome is Code.OK
            return json_response(json.dumps({"name": target.name, "ready": ready}), 200 if ready else 400)
        if method == "GET" and action is None:
            call.api = "metadata"
            return self._metadata(target)
        if method == "POST" and action == "infer":
            call.api = "infer"
            header_length, sequence_header = header_values(request, _INFER_HEADERS)
            body = await read_body(request, self.options.max_body_bytes)
            if self.relay is not None:
                raw_path = request.scope.get("raw_path") or path.encode()
                relayed = functools.partial(self._relayed, call, raw_path.decode("latin-1"), request.headers)
                return await self.in_worker(lambda: self._infer(target, body, header_length, sequence_header, relayed))
            return await self.in_worker(
                lambda: self._infer(target, body, header_length, sequence_header), (call.model, len(body))
            )
        raise invalid_argument(f"Malformed request: {method} {path}")

    def _metadata(self, target: Target) -> Response:
        def render(model: ModelView) -> str:
            versions = self.dispatch.versions(target.name)
            platform = kserve_codec.platform(model.backend_name)
            return kserve_codec.model_metadata_json(target.name, versions, platform, model.signature())

        return json_response(self.dispatch.inspect(target, render))

    def _relayed(
        self, call: Call, path: str, headers: Mapping[str, str], target: Target, sequence_id: int | str, body: bytes
    ) -> Response | None:
        """With several server workers: the owner's answer when another worker holds this sequence, else None."""
        ring, relay = self.dispatch.workers, self.relay
        if ring is None or relay is None:
            return None
        owner = ring.owner(target.name, sequence_id)
        if owner == ring.index:
            return None
        call.forwarded = True  # the owner counts it
        return relay.forward(owner, path, body, headers, f"sequence {sequence_id!r} of model {target.name!r}")

    def _infer(
        self,
        target: Target,
        body: bytes,
        header_length: str | None,
        sequence_header: str | None,
        relayed: Callable[[Target, int | str, bytes], Response | None] | None = None,
    ) -> Response:
        binary: memoryview | None = None
        if header_length is None:
            doc = kserve_codec.parse_numeric_body(body)  # float data as arrays, or None: the general parse
            numbers_only = False
            if doc is None:
                doc = kserve_codec.parse_body(body)
                numbers_only = holds_no_bools(body)
        else:
            doc, binary = kserve_codec.split_binary_body(body, header_length)
            numbers_only = holds_no_bools(body[: len(body) - len(binary)])
        sequence = kserve_sequence.sequence_control(doc, sequence_header)
        if sequence is not None and relayed is not None:
            answer_elsewhere = relayed(target, sequence.id, body)
            if answer_elsewhere is not None:
                return answer_elsewhere

        def decode(model: ModelView, partial: bool) -> kserve_codec.InferRequest:
            budget = self.dispatch.element_budget(model)
            return kserve_codec.decode_infer_request(doc, model.signature(), binary, budget, partial, numbers_only)

        answer = self.dispatch.infer(target, sequence, decode)
        request = answer.request
        if request.binary_outputs:
            content, length = kserve_codec.encode_binary_infer_response(
                answer.model, answer.version, answer.outputs, request.binary_outputs, request.outputs, request.id
            )
            return BinaryInferResponse(content, length, _INFER_HEADERS[0])
        text = kserve_codec.encode_infer_response(
            answer.model, answer.version, answer.outputs, request.outputs, request.id
        )
        return json_response(text)


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    return parse_version(unquote(text))
