"""TLS (`--ssl_config_file`, TF Serving's SSLConfig text): the config reader's pinned errors (each
names the file and the field), the key never left on disk, and over real sockets on 127.0.0.1 both
fronts speak TLS only; with `client_verify` a client without a certificate (or with one from another
CA) is refused by REST and by gRPC, while one with a certificate signed by `custom_ca` is answered.
Certificates are made per test run by trustme; no key is committed."""

import os
import ssl
import stat
import types

import grpc
import httpx
import pytest
import serving_repo
import trustme

from rnnkit_export import export_model
from rnnkit_serving import spawn_server, start_server
from rnnkit_serving.codecs.tfs.protos import import_proto_modules
from rnnkit_serving.config import tls
from rnnkit_serving.config.text_format import ConfigError
from rnnkit_serving.config.tls import SSLConfig, parse_ssl_config, read_ssl_config, rest_ssl_context
from rnnkit_serving.server import cli

BODY = {"instances": [[[1.0]]]}


def quoted(pem: bytes, quote: str = "'") -> str:
    """PEM text as a text-format string: newlines written as \\n (as TF Serving's examples do)."""
    return quote + pem.decode().replace("\n", "\\n") + quote


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca):
    return ca.issue_cert("127.0.0.1", "localhost")


def config_text(server_cert, ca=None, client_verify=None, **extra):
    lines = [
        f"server_key: {quoted(server_cert.private_key_pem.bytes())}",
        f"server_cert: {quoted(server_cert.cert_chain_pems[0].bytes())}",
    ]
    if ca is not None:
        lines.append(f"custom_ca: {quoted(ca.cert_pem.bytes())}")
    if client_verify is not None:
        lines.append(f"client_verify: {client_verify}")
    lines += [f"{key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the config file


def test_a_valid_config_reads_every_field(ca, server_cert, tmp_path):
    path = tmp_path / "ssl.config"
    path.write_text("# TF Serving SSLConfig\n" + config_text(server_cert, ca, "true"))
    config = read_ssl_config(str(path))
    assert config.server_key == server_cert.private_key_pem.bytes().decode()
    assert config.server_cert == server_cert.cert_chain_pems[0].bytes().decode()
    assert config.custom_ca == ca.cert_pem.bytes().decode()
    assert config.client_verify is True and config.source == str(path)
    assert "PRIVATE KEY" not in repr(config)
    key, cert, authority = (
        quoted(pem, '"') for pem in (config.server_key.encode(), config.server_cert.encode(), config.custom_ca.encode())
    )
    readme_style = (  # double quotes and comments after the values, as the README shows
        f"server_key: {key}  # the key\n"
        f"server_cert: {cert}\n"
        f"custom_ca: {authority}   # signs client certificates\n"
        "client_verify: true  # refuse clients without one\n"
    )
    assert parse_ssl_config(readme_style) == SSLConfig(
        config.server_key, config.server_cert, config.custom_ca, True, "<ssl config>"
    )
    plain = parse_ssl_config(config_text(server_cert))
    assert (plain.custom_ca, plain.client_verify) == ("", False)
    assert parse_ssl_config(config_text(server_cert, ca, "false")).client_verify is False


def test_malformed_ssl_configs_name_the_file_and_the_field(ca, server_cert, tmp_path):
    other_key = quoted(trustme.CA().issue_cert("127.0.0.1").private_key_pem.bytes())
    key = quoted(server_cert.private_key_pem.bytes())
    cert = quoted(server_cert.cert_chain_pems[0].bytes())
    not_a_cert = "'-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n'"
    cases = [
        (config_text(server_cert, cipher="'x'"), "unknown SSLConfig field(s) ['cipher']; expected"),
        (f"server_cert: {cert}\n", "`server_key` is required (PEM text) to serve over TLS"),
        (f"server_key: {key}\n", "`server_cert` is required"),
        (f"server_key: '/etc/tls/key.pem'\nserver_cert: {cert}\n", "`server_key` must hold PEM text"),
        (f"server_key: {cert}\nserver_cert: {cert}\n", "`server_key` must hold a PEM PRIVATE KEY, received PEM"),
        (
            f"server_key: '-----BEGIN PRIVATE KEY-----\\n@@@\\n-----END PRIVATE KEY-----'\nserver_cert: {cert}\n",
            "`server_key` has a 'PRIVATE KEY' PEM block whose base64 does not decode",
        ),
        (f"server_key: {other_key}\nserver_cert: {cert}\n", "`server_key` and `server_cert` do not load as a private"),
        (config_text(server_cert, client_verify="true"), "`client_verify: true` needs `custom_ca`"),
        (config_text(server_cert, ca, "maybe"), "`client_verify` must be true or false, received 'maybe'"),
        (config_text(server_cert, client_verify=1, server_port=1), "unknown SSLConfig field(s) ['server_port']"),
        (config_text(server_cert) + f"custom_ca: {not_a_cert}\n", "`custom_ca` does not load as CA certificates"),
        (config_text(server_cert) + f"server_key: {key}\n", "`server_key` is given 2 times"),
        (config_text(server_cert) + "custom_ca: 'unterminated\n", "cannot parse text near"),
        (config_text(server_cert) + "server_cert { x: 1 }\n", "`server_cert` is given 2 times"),
    ]
    for number, (text, message) in enumerate(cases):
        path = tmp_path / f"bad{number}.config"
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            read_ssl_config(str(path))
        assert str(caught.value).startswith(str(path)) and message in str(caught.value), (number, caught.value)
    with pytest.raises(ConfigError, match="`server_cert` must be a quoted string of PEM text, received 5"):
        parse_ssl_config(f"server_key: {key}\nserver_cert: 5\n")
    with pytest.raises(ConfigError, match="cannot read SSL config file '/nonexistent/ssl.config'"):
        read_ssl_config("/nonexistent/ssl.config")


def test_the_cli_reports_a_bad_ssl_config_file_and_exits_2(tmp_path, capsys):
    path = tmp_path / "ssl.config"
    path.write_text("server_key: 'not pem'\nserver_cert: 'not pem either'\n")
    code = cli.main(["--model_base_path", str(tmp_path), "--ssl_config_file", str(path)])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"rnnkit serve: {path}: `server_key` must hold PEM text"), error


def test_the_key_is_on_disk_only_while_the_context_loads_it_and_only_for_its_owner(server_cert, tmp_path, monkeypatch):
    config = parse_ssl_config(config_text(server_cert))
    seen = []

    class Recording(ssl.SSLContext):
        def load_cert_chain(self, certfile, keyfile=None, password=None):
            seen.append([stat.S_IMODE(os.stat(p).st_mode) for p in (os.path.dirname(keyfile), keyfile, certfile)])
            with open(keyfile) as handle:
                seen.append(handle.read() == server_cert.private_key_pem.bytes().decode())
            return super().load_cert_chain(certfile, keyfile, password)

    names = {name: getattr(ssl, name) for name in dir(ssl) if not name.startswith("__")}
    monkeypatch.setattr(tls, "ssl", types.SimpleNamespace(**{**names, "SSLContext": Recording}))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    context = rest_ssl_context(config)
    assert seen == [[0o700, 0o600, 0o600], True]
    assert os.listdir(tmp_path) == []  # removed once loaded: the context holds the key in memory
    assert context.verify_mode == ssl.CERT_NONE and context.minimum_version == ssl.TLSVersion.TLSv1_2


# ------------------------------------------------------------------------------ over sockets


@pytest.fixture(scope="module")
def half(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("tls-repo"))
    export_model(serving_repo.half_plus_two(2.0), base, "half")
    return os.path.join(base, "half")


def grpc_predict(channel, x=1.0, timeout=30):
    predict_pb2, stubs = import_proto_modules(
        "tensorflow_serving.apis.predict_pb2", "tensorflow_serving.apis.prediction_service_pb2_grpc"
    )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half"
    tensor = request.inputs["x"]
    tensor.dtype = 1  # DT_FLOAT
    for size in (1, 1, 1):
        tensor.tensor_shape.dim.add().size = size
    tensor.float_val.append(x)
    reply = stubs.PredictionServiceStub(channel).Predict(request, timeout=timeout)
    return list(reply.outputs["y"].float_val)


def client_files(tmp_path, cert, name):
    key_path, cert_path = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    return str(cert_path), str(key_path)


def https_client_context(ca, cert_files=None):
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    if cert_files is not None:
        context.load_cert_chain(*cert_files)
    return context


@pytest.mark.slow  # a real server with TLS on both fronts
def test_both_fronts_speak_tls_only(ca, server_cert, half):
    config = parse_ssl_config(config_text(server_cert))
    server = start_server(half, "half", port=None, ssl=config)
    try:
        assert server.rest_url.startswith("https://127.0.0.1:")
        url = server.rest_url + "/v1/models/half:predict"
        reply = httpx.post(url, json=BODY, verify=https_client_context(ca), timeout=30)
        assert reply.json() == {"predictions": [[[2.5]]]}
        with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port gets no answer
            httpx.post(url.replace("https://", "http://"), json=BODY, timeout=10)
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the server's CA
            httpx.post(url, json=BODY, verify=https_client_context(trustme.CA()), timeout=10)
        with grpc.secure_channel(server.grpc_target, grpc.ssl_channel_credentials(ca.cert_pem.bytes())) as channel:
            assert grpc_predict(channel, 3.0) == [3.5]
        with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as caught:
            grpc_predict(channel, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


@pytest.mark.slow  # a `python -m serving --ssl_config_file` child process
def test_client_verify_refuses_clients_without_a_certificate_on_both_fronts(ca, server_cert, half, tmp_path):
    path = tmp_path / "ssl.config"
    path.write_text(config_text(server_cert, ca, "true"))
    client = ca.issue_cert("client@rnnkit.test")
    stranger = trustme.CA().issue_cert("client@rnnkit.test")  # a certificate from another CA
    good, foreign = client_files(tmp_path, client, "client"), client_files(tmp_path, stranger, "stranger")
    with spawn_server(
        ["--model_base_path", half, "--model_name", "half", "--ssl_config_file", str(path)], port=None
    ) as proc:
        url = proc.rest_url + "/v1/models/half:predict"
        assert url.startswith("https://")
        reply = httpx.post(url, json=BODY, verify=https_client_context(ca, good), timeout=30)
        assert reply.json() == {"predictions": [[[2.5]]]}
        for files in (None, foreign):
            with pytest.raises(httpx.TransportError):  # the handshake fails: no HTTP answer at all
                httpx.post(url, json=BODY, verify=https_client_context(ca, files), timeout=10)

        def channel(cert=None):
            credentials = grpc.ssl_channel_credentials(
                ca.cert_pem.bytes(),
                cert.private_key_pem.bytes() if cert else None,
                cert.cert_chain_pems[0].bytes() if cert else None,
            )
            return grpc.secure_channel(proc.grpc_target, credentials)

        with channel(client) as verified:
            assert grpc_predict(verified, 5.0) == [4.5]
        for cert in (None, stranger):
            with channel(cert) as refused, pytest.raises(grpc.RpcError) as caught:
                grpc_predict(refused, timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
        # the server still answers verified clients after the refusals
        reply = httpx.post(url, json=BODY, verify=https_client_context(ca, good), timeout=30)
        assert reply.status_code == 200
    assert proc.process.returncode == 0


def test_ssl_config_repr_never_shows_the_key():
    config = SSLConfig("-----BEGIN PRIVATE KEY-----secret", "cert", source="x.config")
    assert "secret" not in repr(config) and "x.config" in repr(config)
