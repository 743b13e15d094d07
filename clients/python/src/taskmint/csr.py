"""Keys and PKCS#10 requests for per-task X.509 credentials.

The issuer uses only the request's public key (its names are ignored), so the
request carries an empty subject; the key never leaves the process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .v1 import common_pb2


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def csr_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A DER PKCS#10 request signed by ``key`` (proof of possession)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


@dataclass
class X509Credential:
    """A minted (or renewed) per-task X.509-SVID with its key.

    Attributes:
        credential: what the issuer recorded (``credential.id`` is the serial
            in lowercase hex).
        chain: leaf first, then intermediates up to a root of the bundle.
        key: the private key of the leaf. Never log it.
        renewal_count: renewals in its lineage (0 for a first mint).
    """

    credential: common_pb2.Credential
    chain: list[x509.Certificate]
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    renewal_count: int = 0

    @property
    def leaf(self) -> x509.Certificate:
        """The certificate itself."""
        return self.chain[0]

    def chain_pem(self) -> bytes:
        """The chain as PEM, leaf first (for ``ssl.SSLContext.load_cert_chain``)."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def key_pem(self) -> bytes:
        """The key as unencrypted PKCS#8 PEM."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def credential_from(
    credential: common_pb2.Credential,
    chain_der: list[bytes],
    key: ec.EllipticCurvePrivateKey,
    renewal_count: int = 0,
) -> X509Credential:
    """Parses a reply's DER chain into an :class:`X509Credential`."""
    return X509Credential(
        credential=credential,
        chain=[x509.load_der_x509_certificate(c) for c in chain_der],
        key=key,
        renewal_count=renewal_count,
    )
