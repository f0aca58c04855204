"""The discovery routes of the REST port: ``/`` (the landing page), ``/openapi.json`` and ``/docs``.

All three only read: the models and their versions come through the
:class:`~rnnkit_serving.dispatch.Dispatch` (status, a :class:`~rnnkit_serving.dispatch.ModelView` per
served version, live sessions) and its metrics; the flags come from the frozen
:class:`~rnnkit_serving.core.server_info.ServerInfo` the server layer passed in. ``GET`` and ``HEAD``
are answered; any other method gets 405 with ``Allow: GET, HEAD``.

``/docs`` is Swagger UI (5.x, from the ``swagger-ui-py`` package) rendered from ``/openapi.json``; its
page, script, stylesheet and icon are all served from here (``/docs/<asset>``, read with
:mod:`importlib.resources`), and the page's Content-Security-Policy only allows this origin, so no
request leaves the machine.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from rnnkit_serving.core.server_info import ServerInfo
from rnnkit_serving.core.status import AVAILABLE
from rnnkit_serving.dispatch import Dispatch, ModelView, Target
from rnnkit_serving.errors import ServingError
from rnnkit_serving.fronts.rest.http_io import JSON, InWorker, RestOptions, json_response
from rnnkit_serving.fronts.rest.landing import (
    CONTENT_SECURITY_POLICY,
    Link,
    ModelSummary,
    Page,
    VersionFacts,
    VersionSummary,
    render_landing,
)
from rnnkit_serving.fronts.rest.openapi import DOCS_ASSETS, METRICS_PATH, ModelEntry, VersionEntry, openapi_document

PAGES = ("/", "/docs", "/openapi.json")
DOCS_PREFIX = "/docs/"
SWAGGER_PACKAGE = "swagger_ui"  # swagger-ui-py: Swagger UI's dist files under swagger_ui/static/
_ALLOWED = "GET, HEAD"
_NO_CACHE = {"cache-control": "no-cache"}
# /docs may load its own assets and fetch /openapi.json from this origin, nothing else
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'"
)
# relative links: the page works behind a proxy that mounts the server under a path prefix
DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rnnkit model server: REST API</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
</head>
<body>
<noscript><p>This page needs JavaScript. The same description is at <a href="openapi.json">openapi.json</a>,
and the server's state at <a href="./">the landing page</a>.</p></noscript>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/rnnkit-docs.js"></script>
</body>
</html>
"""
# validatorUrl null: Swagger UI would otherwise send the document to validator.swagger.io for its badge
DOCS_SCRIPT = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    displayRequestDuration: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""
_MEDIA = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png"}
_assets: dict[str, bytes] = {}
_assets_lock = threading.Lock()


def docs_asset(name: str) -> bytes | None:
    """The bytes of one file of the /docs page (None for a name that is not one of them)."""
    if name not in DOCS_ASSETS:
        return None
    with _assets_lock:
        if name not in _assets:
            if name == "rnnkit-docs.js":
                _assets[name] = DOCS_SCRIPT.encode()
            else:
                _assets[name] = (resources.files(SWAGGER_PACKAGE) / "static" / name).read_bytes()
        return _assets[name]


def is_discovery_path(path: str) -> bool:
    return path in PAGES or path.startswith(DOCS_PREFIX)


# The OpenAPI text is rebuilt when the served (model, versions) change, and at least this often (a version
# directory replaced under the same number keeps its number)
OPENAPI_MAX_AGE_S = 10.0


class DiscoveryRoutes:
    """``/``, ``/docs`` and ``/openapi.json``. The page and the document are built in a worker thread, never on
    the event loop: with 20 models the document takes ~19 ms to build and write, which a client asking for it in
    a loop would otherwise take from every other connection. The document's text is also kept until the served
    models or versions change (or :data:`OPENAPI_MAX_AGE_S` passes), so asking again costs a lookup."""

    def __init__(
        self,
        dispatch: Dispatch,
        options: RestOptions,
        info: ServerInfo,
        not_found: Callable[[], Response],
        in_worker: InWorker,
    ) -> None:
        self.dispatch = dispatch
        self.options = options
        self.info = info
        self._not_found = not_found
        self._in_worker = in_worker
        self._openapi_lock = threading.Lock()
        self._openapi: tuple[object, float, bytes] | None = None  # (served models and versions, built at, text)
        self.openapi_builds = 0

    async def handle(self, request: Request, path: str) -> Response:
        if request.method not in ("GET", "HEAD"):
            body = json.dumps({"error": f"{path} answers GET and HEAD only; received {request.method}"})
            return Response(body, 405, {"allow": _ALLOWED}, media_type=JSON)
        if path == "/":
            headers = {"content-security-policy": CONTENT_SECURITY_POLICY, **_NO_CACHE}
            return await self._in_worker(
                lambda: Response(render_landing(self.page()), headers=headers, media_type="text/html")
            )
        if path == "/openapi.json":
            return await self._in_worker(lambda: json_response(self.openapi_text()))
        if path == "/docs":
            return Response(
                DOCS_HTML, headers={"content-security-policy": DOCS_CONTENT_SECURITY_POLICY}, media_type="text/html"
            )
        name = path[len(DOCS_PREFIX) :]
        content = docs_asset(name)
        if content is None:
            return self._not_found()
        media = _MEDIA[name[name.rfind(".") :]]
        return Response(content, headers={"cache-control": "max-age=3600"}, media_type=media)

    # ------------------------------------------------------------------------- reading state

    def openapi_text(self) -> bytes:
        """:meth:`document` as JSON, rebuilt only when the served models or versions changed or it is older
        than :data:`OPENAPI_MAX_AGE_S`."""
        served = tuple((name, tuple(self.dispatch.versions(name))) for name in self.dispatch.model_names())
        with self._openapi_lock:
            cached = self._openapi
            if cached is not None and cached[0] == served and time.monotonic() - cached[1] < OPENAPI_MAX_AGE_S:
                return cached[2]
            text = json.dumps(self.document()).encode()
            self._openapi = (served, time.monotonic(), text)
            self.openapi_builds += 1
            return text

    def document(self) -> dict[str, object]:
        """The OpenAPI document with the served models and the signatures of their served versions."""
        models = []
        for name in self.dispatch.model_names():
            entries = []
            for version in self.dispatch.versions(name):
                try:
                    entries.append(self.dispatch.inspect(Target(name, version), _version_entry))
                except ServingError:  # retired since it was listed
                    continue
            models.append(ModelEntry(name, tuple(entries)))
        return openapi_document(models, server_version=self.info.version, max_request_bytes=self.options.max_body_bytes)

    def page(self) -> Page:
        traffic = self.dispatch.metrics.traffic()
        sessions = self.dispatch.live_sessions()
        models = []
        for name in self.dispatch.model_names():
            try:
                statuses = self.dispatch.status(name)
            except ServingError as error:  # no version found under the base path (yet)
                models.append(ModelSummary(name, (), sessions.get(name, 0), traffic.get(name), error.message))
                continue
            rows = []
            for status in statuses:
                facts = None
                if status.state == AVAILABLE:
                    try:
                        facts = self.dispatch.inspect(Target(name, status.version), _facts)
                    except ServingError:  # retired since it was listed
                        pass
                rows.append(VersionSummary(status, facts))
            models.append(ModelSummary(name, tuple(rows), sessions.get(name, 0), traffic.get(name)))
        links = (
            Link("docs", "API (interactive)"),
            Link("openapi.json", "OpenAPI document"),
            Link("v2", "KServe server metadata"),
            Link("v2/health/ready", "readiness"),
            Link(METRICS_PATH.lstrip("/"), "Prometheus metrics"),
        )
        return Page(self.info, tuple(models), links)


def _version_entry(model: ModelView) -> VersionEntry:
    return VersionEntry(model.version, dict(model.signatures), model.streaming_reason is None)


def _facts(model: ModelView) -> VersionFacts:
    described = model.describe()
    devices = sorted({str(facts.get("device")) for facts in described.values() if facts.get("device")})
    providers: list[str] = []
    for facts in described.values():
        for provider in facts.get("providers") or ():
            if str(provider) not in providers:
                providers.append(str(provider))
    fallback = next((str(f["fallback"]) for f in described.values() if f.get("fallback")), None)
    return VersionFacts(
        model.backend_name,
        model.variant,
        tuple(devices),
        tuple(providers),
        fallback,
        model.streaming_reason,
        dict(model.signatures),
    )
