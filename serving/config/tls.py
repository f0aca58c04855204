"""TLS for both fronts: TF Serving's ``--ssl_config_file`` (an ``SSLConfig`` message in protobuf text format).

TF Serving's ``tensorflow_serving/config/ssl_config.proto`` has four fields, all read here::

    server_key: "-----BEGIN PRIVATE KEY-----\\n...\\n-----END PRIVATE KEY-----\\n"   # PEM text, not a path
    server_cert: "-----BEGIN CERTIFICATE-----\\n...\\n-----END CERTIFICATE-----\\n"
    custom_ca: "-----BEGIN CERTIFICATE-----\\n..."   # the CA that signs client certificates
    client_verify: true                                # refuse clients without a certificate signed by custom_ca

The ``tensorflow-serving-api`` wheel ships no ``ssl_config_pb2``, so the file is read with the same
text-format reader as ``--model_config_file``; each field is checked here and a bad one is named
with the file. gRPC gets ``grpc.ssl_server_credentials`` (``require_client_auth=client_verify``),
REST an ``ssl.SSLContext`` built in memory: the key is written to a private (0700 directory,
0600 file) temporary directory only for ``load_cert_chain`` and removed right after.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any

from rnnkit_serving.config.text_format import ConfigError, parse_text_format

SSL_FIELDS = ("server_key", "server_cert", "custom_ca", "client_verify")
_TRUE = ("true", "True", "t", "1")
_FALSE = ("false", "False", "f", "0")
_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


@dataclass(frozen=True)
class SSLConfig:
    """TF Serving's ``SSLConfig``: PEM texts and whether client certificates are required."""

    server_key: str
    server_cert: str
    custom_ca: str = ""
    client_verify: bool = False
    source: str = "<ssl config>"

    def __repr__(self) -> str:  # never print the key
        ca = bool(self.custom_ca)
        return f"SSLConfig(source={self.source!r}, client_verify={self.client_verify}, custom_ca={ca})"


def _pem_blocks(text: str, field: str, source: str, kinds: tuple[str, ...]) -> list[str]:
    """The PEM blocks of `text` whose label ends with one of `kinds`; each one's base64 must decode."""
    blocks = _PEM.findall(text)
    if not blocks:
        raise ConfigError(
            f"{source}: `{field}` must hold PEM text ('-----BEGIN ...-----' ... '-----END ...-----'; the "
            f"content, not a file name; newlines written as \\n), received {text[:40]!r}"
        )
    found = []
    for label, body in blocks:
        try:
            base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{source}: `{field}` has a '{label}' PEM block whose base64 does not decode") from None
        if label.endswith(kinds):
            found.append(label)
    if not found:
        labels = [label for label, _ in blocks]
        raise ConfigError(f"{source}: `{field}` must hold a PEM {' or '.join(kinds)}, received PEM blocks {labels}")
    return found


def parse_ssl_config(text: str, source: str = "<ssl config>") -> SSLConfig:
    """``SSLConfig`` text -> :class:`SSLConfig`, with every field checked (errors name `source` and the field)."""
    fields = parse_text_format(text, source)
    unknown = sorted(set(fields) - set(SSL_FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown SSLConfig field(s) {unknown}; expected {list(SSL_FIELDS)}")
    values: dict[str, Any] = {}
    for name in SSL_FIELDS:
        given = fields.get(name, [])
        if len(given) > 1:
            raise ConfigError(f"{source}: `{name}` is given {len(given)} times; it is a single field")
        values[name] = given[0] if given else None
    for name in ("server_key", "server_cert", "custom_ca"):
        value = values[name]
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{source}: `{name}` must be a quoted string of PEM text, received {value!r}")
    verify = values["client_verify"]
    if verify is None:
        verify = False
    elif isinstance(verify, (str, int)) and str(verify) in _TRUE + _FALSE:
        verify = str(verify) in _TRUE
    else:
        raise ConfigError(f"{source}: `client_verify` must be true or false, received {verify!r}")
    for name in ("server_key", "server_cert"):
        if not values[name]:
            raise ConfigError(f"{source}: `{name}` is required (PEM text) to serve over TLS")
    _pem_blocks(values["server_key"], "server_key", source, ("PRIVATE KEY",))
    _pem_blocks(values["server_cert"], "server_cert", source, ("CERTIFICATE",))
    if values["custom_ca"]:
        _pem_blocks(values["custom_ca"], "custom_ca", source, ("CERTIFICATE",))
    elif verify:
        raise ConfigError(
            f"{source}: `client_verify: true` needs `custom_ca` (the CA certificate that signs client certificates)"
        )
    config = SSLConfig(values["server_key"], values["server_cert"], values["custom_ca"] or "", verify, source)
    rest_ssl_context(config)  # the key, the certificate and the CA load, and the key matches the certificate
    return config


def read_ssl_config(path: str) -> SSLConfig:
    """Read ``--ssl_config_file``."""
    try:
        with open(path) as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read SSL config file {path!r}: {error}") from error
    return parse_ssl_config(text, path)


def rest_ssl_context(config: SSLConfig) -> ssl.SSLContext:
    """A server ``SSLContext`` (TLS 1.2+) holding the key and certificate; client certificates required
    (and checked against ``custom_ca``) when ``client_verify``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="rnnkit-tls-") as private:  # mkdtemp: mode 0700
        key_path, cert_path = os.path.join(private, "key.pem"), os.path.join(private, "cert.pem")
        for path, text in ((key_path, config.server_key), (cert_path, config.server_cert)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(text)
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as error:
            raise ConfigError(
                f"{config.source}: `server_key` and `server_cert` do not load as a private key and its "
                f"certificate chain ({error.reason or error})"
            ) from None
    if config.custom_ca:
        try:
            context.load_verify_locations(cadata=config.custom_ca)
        except ssl.SSLError as error:
            raise ConfigError(
                f"{config.source}: `custom_ca` does not load as CA certificates ({error.reason or error})"
            ) from None
    context.verify_mode = ssl.CERT_REQUIRED if config.client_verify else ssl.CERT_NONE
    return context


def grpc_server_credentials(config: SSLConfig) -> Any:
    """``grpc.ssl_server_credentials`` for the same key, certificate, CA and client rule."""
    import grpc

    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() if config.custom_ca else None,
        require_client_auth=config.client_verify,
    )
