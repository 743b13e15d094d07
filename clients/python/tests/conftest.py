"""A live taskmint dev server for the tests.

The binary comes from ``TASKMINT_BIN`` or is built with ``cargo build`` from
this checkout. ``taskmint dev init`` writes a dev trust domain into a temporary
directory and ``taskmint serve`` runs on it, on a free loopback port.

A second server (``spire_like_server``) serves with an SVID that carries only
its URI SAN, as SPIRE issues it, signed by the same dev root.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[3]


def taskmint_bin() -> Path:
    """The taskmint binary: ``TASKMINT_BIN``, or a fresh ``cargo build``."""
    if os.environ.get("TASKMINT_BIN"):
        return Path(os.environ["TASKMINT_BIN"])
    subprocess.run(["cargo", "build", "--quiet", "--bin", "taskmint"], cwd=REPO, check=True)
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(json.loads(meta.stdout)["target_directory"]) / "debug" / "taskmint"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running dev server."""

    addr: str
    dir: Path
    proc: subprocess.Popen
    log: Path

    def file(self, name: str) -> str:
        return str(self.dir / name)


def start(binary: Path, cfg: Path, addr: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [str(binary), "serve", "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT
        )
    host, port = addr.rsplit(":", 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"taskmint serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"taskmint serve did not listen on {addr}:\n{log.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def binary() -> Path:
    return taskmint_bin()


@pytest.fixture(scope="session")
def dev_server(binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``taskmint dev init`` + ``taskmint serve``: its serving SVID has the URI
    SAN ``spiffe://example.org/taskmint`` and DNS SAN ``localhost``."""
    d = tmp_path_factory.mktemp("dev")
    addr = f"127.0.0.1:{free_port()}"
    subprocess.run(
        [str(binary), "dev", "init", "--dir", str(d), "--listen", addr, "--force"],
        check=True,
        capture_output=True,
    )
    proc = start(binary, d / "taskmint.toml", addr, d / "serve.log")
    yield Server(addr, d, proc, d / "serve.log")
    stop(proc)


def uri_only_svid(root_dir: Path, spiffe_id: str) -> tuple[bytes, bytes]:
    """An X.509-SVID as SPIRE issues it (URI SAN only), signed by the dev root."""
    root = x509.load_pem_x509_certificate((root_dir / "bundle.pem").read_bytes())
    root_key = serialization.load_pem_private_key((root_dir / "root.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE")]))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture(scope="session")
def spire_like_server(
    binary: Path, dev_server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A second issuer on the same dev trust domain whose serving SVID has only
    the URI SAN ``spiffe://example.org/taskmint``, no DNS name."""
    d = tmp_path_factory.mktemp("spire")
    for f in (
        "bundle.pem",
        "root.key",
        "signing-ca.pem",
        "signing-ca.key",
        "jwt.key",
        "policy.cedar",
        "agent.pem",
        "agent.key",
        "sidecar.pem",
        "sidecar.key",
    ):
        shutil.copy(dev_server.dir / f, d / f)
    cert, key = uri_only_svid(d, "spiffe://example.org/taskmint")
    (d / "taskmint.pem").write_bytes(cert)
    (d / "taskmint.key").write_bytes(key)
    addr = f"127.0.0.1:{free_port()}"
    cfg = (dev_server.dir / "taskmint.toml").read_text()
    cfg = re.sub(r'(?m)^addr = ".*"$', f'addr = "{addr}"', cfg)
    (d / "taskmint.toml").write_text(cfg)
    proc = start(binary, d / "taskmint.toml", addr, d / "serve.log")
    yield Server(addr, d, proc, d / "serve.log")
    stop(proc)
