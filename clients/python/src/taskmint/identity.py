"""The workload's identity: its X.509-SVID, key and trust bundles.

Two sources: PEM files (:meth:`Identity.from_files`, re-read on every new
connection so a rotated SVID is picked up) or a SPIFFE Workload API such as a
SPIRE agent's socket (:meth:`Identity.from_workload_api`, needs the
``taskmint[spiffe]`` extra), which keeps the SVID and bundles current.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .errors import ConfigError

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Material:
    """What one TLS connection needs, PEM encoded.

    Attributes:
        cert_chain_pem: the SVID, leaf first, then intermediates.
        key_pem: the SVID's PKCS#8 private key. Never log it.
        bundle_pem: the X.509 authorities that verify the issuer.
        spiffe_id: the workload's own SPIFFE ID (the leaf's URI SAN).
    """

    cert_chain_pem: bytes
    key_pem: bytes
    bundle_pem: bytes
    spiffe_id: str

    def __repr__(self) -> str:  # keep the key out of logs and tracebacks
        return f"Material(spiffe_id={self.spiffe_id!r})"


def spiffe_id_of(cert: x509.Certificate) -> str:
    """The SPIFFE ID of an X.509-SVID: its one ``spiffe://`` URI SAN.

    Raises:
        ConfigError: the certificate has no URI SAN, or more than one.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ConfigError("the certificate has no subjectAltName, so no SPIFFE ID") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or not uris[0].startswith("spiffe://"):
        raise ConfigError(f"an X.509-SVID has exactly one spiffe:// URI SAN; this one has {uris!r}")
    return uris[0]


def trust_domain_of(spiffe_id: str) -> str:
    """The trust domain of ``spiffe://<td>/<path>``.

    Raises:
        ConfigError: ``spiffe_id`` is not a SPIFFE ID of a workload.
    """
    if not spiffe_id.startswith("spiffe://"):
        raise ConfigError(f"`{spiffe_id}` is not a SPIFFE ID (spiffe://<trust-domain>/<path>)")
    td, _, path = spiffe_id[len("spiffe://") :].partition("/")
    if not td or not path or td != td.lower():
        raise ConfigError(
            f"`{spiffe_id}` is not a workload SPIFFE ID: it needs a lowercase trust "
            "domain and a non-empty path"
        )
    return td


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the {what} `{path}`: {e.strerror}") from None


class Identity:
    """Where the client's SVID and the issuer's trust bundle come from.

    Build one with :meth:`from_files` or :meth:`from_workload_api`.
    """

    def material(self, trust_domain: str | None = None) -> Material:
        """The current SVID and the bundle of ``trust_domain`` (default: the
        workload's own).

        Raises:
            ConfigError: the SVID or bundle is unreadable or missing.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Releases what the source holds (the Workload API stream)."""

    @staticmethod
    def from_files(cert: PathLike, key: PathLike, bundle: PathLike) -> Identity:
        """An identity read from PEM files.

        Args:
            cert: the SVID chain, leaf first (e.g. ``certs/dev/agent.pem``).
            key: its PKCS#8 private key (e.g. ``certs/dev/agent.key``).
            bundle: the trust bundle that verifies the issuer
                (e.g. ``certs/dev/bundle.pem``).
        """
        ident = _FileIdentity(Path(cert), Path(key), Path(bundle))
        ident.material()  # fail now, not at the first call
        return ident

    @staticmethod
    def from_workload_api(socket: str | None = None, timeout: float = 10.0) -> Identity:
        """An identity kept current by a SPIFFE Workload API.

        Args:
            socket: e.g. ``unix:///run/spire/agent.sock``; default: the
                ``SPIFFE_ENDPOINT_SOCKET`` environment variable.
            timeout: seconds to wait for the first SVID.

        Raises:
            ConfigError: ``spiffe`` is not installed, no socket is named, or
                no SVID arrived in time.
        """
        try:
            from spiffe import X509Source
        except ImportError:
            raise ConfigError(
                "the Workload API needs the `spiffe` package: pip install 'taskmint[spiffe]'"
            ) from None
        if socket is None and not os.environ.get("SPIFFE_ENDPOINT_SOCKET"):
            raise ConfigError(
                "no Workload API socket: pass one or set SPIFFE_ENDPOINT_SOCKET "
                "(e.g. unix:///run/spire/agent.sock)"
            )
        try:
            source = X509Source(socket_path=socket, timeout_in_seconds=timeout)
        except Exception as e:  # noqa: BLE001 (py-spiffe raises unrelated types)
            raise ConfigError(
                f"Workload API `{socket or os.environ['SPIFFE_ENDPOINT_SOCKET']}`: {e}"
            ) from None
        return _WorkloadApiIdentity(source)


class _FileIdentity(Identity):
    def __init__(self, cert: Path, key: Path, bundle: Path) -> None:
        self._cert, self._key, self._bundle = cert, key, bundle

    def __repr__(self) -> str:
        return (
            f"Identity.from_files({str(self._cert)!r}, {str(self._key)!r}, {str(self._bundle)!r})"
        )

    def material(self, trust_domain: str | None = None) -> Material:
        chain = _read(self._cert, "SVID")
        key = _read(self._key, "SVID key")
        bundle = _read(self._bundle, "trust bundle")
        try:
            certs = x509.load_pem_x509_certificates(chain)
        except ValueError:
            raise ConfigError(f"`{self._cert}` holds no PEM certificate") from None
        try:
            x509.load_pem_x509_certificates(bundle)
        except ValueError:
            raise ConfigError(f"`{self._bundle}` holds no PEM certificate") from None
        try:
            serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError):
            raise ConfigError(f"`{self._key}` holds no unencrypted PEM private key") from None
        try:
            own = spiffe_id_of(certs[0])
        except ConfigError as e:
            raise ConfigError(f"`{self._cert}`: {e}") from None
        return Material(chain, key, bundle, own)


class _WorkloadApiIdentity(Identity):
    def __init__(self, source: Any) -> None:
        self._source = source

    def __repr__(self) -> str:
        return "Identity.from_workload_api(...)"

    def material(self, trust_domain: str | None = None) -> Material:
        from spiffe import TrustDomain

        # One context: the SVID and the bundles of the same update.
        ctx = self._source.get_x509_context()
        svid = ctx.default_svid
        own = str(svid.spiffe_id)
        td = trust_domain or trust_domain_of(own)
        bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain(td))
        if bundle is None:
            raise ConfigError(f"the Workload API holds no X.509 bundle for trust domain `{td}`")
        pem = serialization.Encoding.PEM
        chain: list[x509.Certificate] = list(svid.cert_chain)
        roots = sorted(bundle.x509_authorities, key=lambda c: c.serial_number)
        return Material(
            cert_chain_pem=b"".join(c.public_bytes(pem) for c in chain),
            key_pem=svid.private_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            bundle_pem=b"".join(c.public_bytes(pem) for c in roots),
            spiffe_id=own,
        )

    def close(self) -> None:
        self._source.close()
