"""TLS: with a certificate configured, HTTP and gRPC are served encrypted (and only so)."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.live import LiveServer


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[LiveServer, Path]]:
    cert, key = _self_signed(tmp_path)
    server = LiveServer.build(tmp_path / "home", demo_model=True, tls_certfile=cert, tls_keyfile=key).start()
    try:
        yield server, cert
    finally:
        server.stop()


def test_http_and_grpc_are_encrypted(tls_server: tuple[LiveServer, Path]) -> None:
    server, cert = tls_server
    https = f"https://127.0.0.1:{server.settings.http_port}"
    with httpx.Client(base_url=https, verify=str(cert), headers=server.headers) as c:
        assert c.get("/v2/health/ready").json() == {"ready": True}
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
        assert c.post("/v2/models/digits/infer", json=body).status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server.url}/v2/health/ready", timeout=5)  # plain HTTP is not served
    client = grpcclient.InferenceServerClient(server.grpc_url, ssl=True, root_certificates=str(cert))
    inp = grpcclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
    result = client.infer("digits", [inp], headers={"authorization": f"Bearer {server.admin_key}"})
    assert result.as_numpy("label").shape == (1,)
