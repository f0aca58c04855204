"""The landing page at ``GET /``: what this server is and serves, as plain HTML (pure rendering, no I/O).

:func:`render_landing` turns a read-only snapshot (:class:`ModelSummary` per model, the
:class:`~rnnkit_serving.core.server_info.ServerInfo` the server was started with) into one HTML page
with a little inline CSS: readable without JavaScript, and with no form, button or script, so it
can never act on the server. Every string that comes from a model repository or a client (model
names, error messages, tensor names, metric labels) is HTML-escaped; links to a model's endpoints
percent-encode its name. The page is sent with a Content-Security-Policy that forbids scripts.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from rnnkit_serving.core.metrics import PERCENTILES, RECENT_WINDOW, Traffic
from rnnkit_serving.core.server_info import ServerInfo
from rnnkit_serving.core.signature import Signature, TensorSpec
from rnnkit_serving.core.status import VersionStatus

# no script may run on the page, and nothing is loaded from anywhere
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class VersionFacts:
    """What a served version runs on (read through the dispatch's model view)."""

    backend: str
    variant: str
    devices: tuple[str, ...]
    providers: tuple[str, ...]
    fallback: str | None
    streaming_reason: str | None  # None: the version streams
    signatures: Mapping[str, Signature]


@dataclass(frozen=True)
class VersionSummary:
    status: VersionStatus
    facts: VersionFacts | None = None  # only for an AVAILABLE version


@dataclass(frozen=True)
class ModelSummary:
    name: str
    versions: tuple[VersionSummary, ...] = ()
    live_sessions: int = 0
    traffic: Traffic | None = None
    not_found: str = ""  # why no version is listed (no version was ever found)


@dataclass(frozen=True)
class Link:
    href: str
    text: str


@dataclass(frozen=True)
class Page:
    info: ServerInfo
    models: Sequence[ModelSummary] = ()
    links: Sequence[Link] = field(default_factory=tuple)


def esc(text: object) -> str:
    """`text` safe in HTML text and in quoted attributes."""
    return html.escape(str(text), quote=True)


def model_url(prefix: str, name: str, suffix: str = "") -> str:
    """A link to one of a model's endpoints (`name` percent-encoded, then the whole escaped for HTML)."""
    return esc(f"{prefix}{quote(name, safe='')}{suffix}")


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 72rem;
       padding: 1rem 1.5rem 3rem; color: #1d232a; background: #fff; }
h1 { font-size: 1.6rem; margin: .5rem 0 0; } h2 { font-size: 1.25rem; margin: 2rem 0 .5rem;
     border-bottom: 1px solid #d0d7de; } h3 { font-size: 1.1rem; margin: 1.5rem 0 .25rem; }
.sub { color: #57606a; margin: 0 0 1rem; } nav a { margin-right: 1rem; }
table { border-collapse: collapse; margin: .25rem 0 .75rem; } th, td { text-align: left; vertical-align: top;
        padding: .25rem .75rem .25rem 0; border-bottom: 1px solid #eaeef2; } th { font-weight: 600; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; background: #f6f8fa; padding: 0 .2rem; }
.state { font-weight: 600; } .AVAILABLE { color: #1a7f37; } .LOADING { color: #9a6700; } .END { color: #cf222e; }
.error { color: #cf222e; white-space: pre-wrap; word-break: break-word; } .muted { color: #57606a; }
"""


def _settings(info: ServerInfo) -> str:
    parts: list[str] = []
    group = None
    for setting in info.settings:
        if setting.group != group:
            if group is not None:
                parts.append("</table>")
            group = setting.group
            parts.append(f"<h3>{esc(group)}</h3><table>")
        flag = f"<code>{esc(setting.flag)}</code>" if setting.flag else ""
        parts.append(f"<tr><th>{esc(setting.name)}</th><td>{esc(setting.value)}</td><td>{flag}</td></tr>")
    if group is not None:
        parts.append("</table>")
    return "".join(parts)


def _ms(us: float) -> str:
    return f"{us / 1000:.3g} ms"


def _traffic(traffic: Traffic | None, sessions: int) -> str:
    rows = [f"<tr><th>open sessions</th><td>{sessions}</td></tr>"]
    if traffic is None or not traffic.total:
        rows.append("<tr><th>requests</th><td>none yet</td></tr>")
    else:
        counts = ", ".join(f"{esc(status)} {count}" for status, count in traffic.counts.items())
        rows.append(f"<tr><th>requests</th><td>{traffic.total} ({counts})</td></tr>")
        if traffic.percentiles_us:
            latency = ", ".join(f"p{p} {_ms(traffic.percentiles_us[p])}" for p in PERCENTILES)
            rows.append(
                f'<tr><th>latency</th><td>{latency} <span class="muted">(last {traffic.window} successful '
                f"requests; at most {RECENT_WINDOW})</span></td></tr>"
            )
    return '<table class="traffic">' + "".join(rows) + "</table>"


def _signature(signature: Signature) -> str:
    def tensors(specs: Sequence[TensorSpec]) -> str:
        return ", ".join(f"<code>{esc(s.name)}</code> {esc(s.dtype)} {esc(s.shape_text())}" for s in specs)

    return f"<code>{esc(signature.name)}</code>: {tensors(signature.inputs)} &rarr; {tensors(signature.outputs)}"


def _version(row: VersionSummary) -> str:
    status = row.status
    state = f'<span class="state {esc(status.state)}">{esc(status.state)}</span>'
    if status.error_message:
        state += f'<div class="error">{esc(status.error_code)}: {esc(status.error_message)}</div>'
    facts = row.facts
    if facts is None:
        return f'<tr><td>{status.version}</td><td>{state}</td><td colspan="4" class="muted">-</td></tr>'
    runtime = f"{esc(facts.backend)}, {esc(facts.variant)}"
    device = esc(", ".join(facts.devices) or "-")
    if facts.providers:
        device += '<br><span class="muted">' + esc(", ".join(facts.providers)) + "</span>"
    if facts.fallback:
        device += f'<div class="error">{esc(facts.fallback)}</div>'
    streaming = (
        "yes" if facts.streaming_reason is None else f'no <span class="muted">({esc(facts.streaming_reason)})</span>'
    )
    signatures = "<br>".join(_signature(facts.signatures[name]) for name in facts.signatures)
    return (
        f"<tr><td>{status.version}</td><td>{state}</td><td>{runtime}</td><td>{device}</td>"
        f"<td>{streaming}</td><td>{signatures}</td></tr>"
    )


def _model(model: ModelSummary) -> str:
    name = model.name
    links = " ".join(
        f'<a href="{model_url(prefix, name, suffix)}">{esc(text)}</a>'
        for prefix, suffix, text in (
            ("v1/models/", "", "status"),
            ("v1/models/", "/metadata", "TF Serving metadata"),
            ("v2/models/", "", "KServe metadata"),
            ("v2/models/", "/ready", "ready"),
        )
    )
    if model.versions:
        rows = "".join(_version(v) for v in model.versions)
        versions = (
            '<table class="versions"><tr><th>version</th><th>state</th><th>runtime</th><th>device, providers</th>'
            f"<th>streaming</th><th>signatures (inputs &rarr; outputs)</th></tr>{rows}</table>"
        )
    else:
        versions = f'<p class="muted">{esc(model.not_found or "no versions found yet")}</p>'
    return (
        f'<section class="model"><h3>{esc(name)}</h3><nav>{links}</nav>'
        f"{_traffic(model.traffic, model.live_sessions)}{versions}</section>"
    )


def render_landing(page: Page) -> str:
    """The landing page's HTML."""
    info = page.info
    links = "".join(f'<a href="{esc(link.href)}">{esc(link.text)}</a>' for link in page.links)
    models = "".join(_model(m) for m in page.models) or "<p>No model is configured.</p>"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>rnnkit model server {esc(info.version)}</title><style>{_CSS}</style>"
        '<link rel="icon" type="image/png" href="docs/favicon-32x32.png"></head><body>'
        f'<header><h1>rnnkit model server</h1><p class="sub">version {esc(info.version)}: TF Serving REST and '
        f"gRPC, KServe v2 (Open Inference Protocol). This page only reads the server's state.</p>"
        f"<nav>{links}</nav></header>"
        f"<main><h2>Models</h2>{models}<h2>Server</h2>{_settings(info)}</main></body></html>"
    )
