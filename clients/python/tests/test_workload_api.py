"""The caller's SVID from a SPIFFE Workload API (py-spiffe's X509Source).

An in-test Workload API server (the SPIFFE ``workload.proto``, as a SPIRE
agent serves it) hands out the dev ``agent`` SVID, then a rotated one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import secrets
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from taskmint import Client, Identity

spiffe = pytest.importorskip("spiffe")
from conftest import uri_only_svid
from spiffe._proto import workload_pb2, workload_pb2_grpc

AGENT = "spiffe://example.org/workload/agent"
DER = serialization.Encoding.DER


def response(chain_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> workload_pb2.X509SVIDResponse:
    chain = b"".join(c.public_bytes(DER) for c in x509.load_pem_x509_certificates(chain_pem))
    key = serialization.load_pem_private_key(key_pem, None).private_bytes(
        DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    bundle = b"".join(c.public_bytes(DER) for c in x509.load_pem_x509_certificates(bundle_pem))
    return workload_pb2.X509SVIDResponse(
        svids=[
            workload_pb2.X509SVID(
                spiffe_id=AGENT, x509_svid=chain, x509_svid_key=key, bundle=bundle
            )
        ]
    )


class FakeAgent(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """Streams every response put in ``updates`` to each X.509 watcher."""

    def __init__(self) -> None:
        self.updates: queue.Queue[workload_pb2.X509SVIDResponse] = queue.Queue()
        self.current: workload_pb2.X509SVIDResponse | None = None

    def FetchX509SVID(self, request, context):
        sent = None
        while context.is_active():
            try:
                self.current = self.updates.get(timeout=0.1)
            except queue.Empty:
                pass
            if self.current is not None and self.current is not sent:
                sent = self.current
                yield sent


def thumbprint(cert_pem: bytes) -> str:
    leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    digest = hashlib.sha256(leaf.public_bytes(DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def cnf_of(token: str) -> str:
    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["cnf"]["x5t#S256"]


def test_svid_from_the_workload_api_and_its_rotation(dev_server, tmp_path: Path):
    d = Path(dev_server.dir)
    bundle = (d / "bundle.pem").read_bytes()
    first = ((d / "agent.pem").read_bytes(), (d / "agent.key").read_bytes())
    fake = FakeAgent()
    fake.updates.put(response(*first, bundle))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(fake, server)
    sock = tmp_path / "agent.sock"
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    ident = Identity.from_workload_api(f"unix://{sock}", timeout=10)
    try:
        with Client(dev_server.addr, ident) as c:
            assert c.spiffe_id == AGENT
            token = c.mint_jwt(f"wl-{secrets.token_hex(4)}", "https://api.example.org").token
            assert cnf_of(token) == thumbprint(first[0])

        # The agent rotates the SVID: the source follows, new connections use it.
        rotated = uri_only_svid(d, AGENT)
        fake.updates.put(response(*rotated, bundle))
        deadline = time.monotonic() + 10
        while ident.material().cert_chain_pem != x509.load_pem_x509_certificates(rotated[0])[
            0
        ].public_bytes(serialization.Encoding.PEM):
            assert time.monotonic() < deadline, "the rotated SVID never arrived"
            time.sleep(0.1)
        with Client(dev_server.addr, ident) as c:
            token = c.mint_jwt(f"wl-{secrets.token_hex(4)}", "https://api.example.org").token
            assert cnf_of(token) == thumbprint(rotated[0])
    finally:
        ident.close()
        server.stop(0)
