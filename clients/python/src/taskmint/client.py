"""The taskmint client: one channel to the issuer, every call a workload makes.

It connects with the workload's X.509-SVID (files or the Workload API) and
verifies the issuer by its SPIFFE ID: see :class:`Verify` for the two ways.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.message import Message

from . import csr as _csr
from ._tls import SpiffeBridge, split_address
from .errors import ConfigError, RpcError, ServerVerificationError, Unavailable, from_grpc
from .feed import Watcher
from .identity import Identity, trust_domain_of
from .v1 import (
    common_pb2,
    issuer_pb2,
    issuer_pb2_grpc,
    revocations_pb2,
    revocations_pb2_grpc,
)

M = TypeVar("M", bound=Message)


class Verify(enum.Enum):
    """How the client verifies that the server is the issuer.

    Both verify the server's chain against the trust bundle of the expected
    SPIFFE ID's trust domain and present the client's SVID.
    """

    #: The server's SVID must carry exactly one URI SAN equal to the expected
    #: SPIFFE ID, checked on every connection. Works with serving SVIDs that
    #: have only a URI SAN (as SPIRE issues them). TLS is done by Python's
    #: ``ssl`` in a bridge private to the process; grpcio speaks to it over a
    #: Unix socket.
    SPIFFE_ID = "spiffe-id"
    #: grpcio's own TLS, which checks a DNS name (``tls_name``, default: the
    #: host of ``server``) against the serving SVID's DNS SANs. The serving
    #: SVID must carry that DNS name (the dev one has ``localhost``; with
    #: SPIRE, the registration entry's ``-dns``). The SPIFFE ID is checked
    #: once, when the client connects.
    DNS_NAME = "dns-name"


class Client:
    """A connection to a taskmint issuer.

    Args:
        server: ``host:port`` of the issuer.
        identity: the workload's SVID and the trust bundle
            (:meth:`Identity.from_files`, :meth:`Identity.from_workload_api`).
        server_id: the issuer's expected SPIFFE ID; default
            ``spiffe://<the workload's trust domain>/taskmint``.
        verify: see :class:`Verify`.
        tls_name: for :attr:`Verify.DNS_NAME`, the DNS name the serving SVID
            must carry when it is not the host of ``server``.
        timeout: seconds each unary call may take.
        metadata: gRPC metadata sent with every call, e.g.
            ``[("traceparent", "00-<trace-id>-<span-id>-01")]``; the
            attribute :attr:`metadata` may be changed between calls.

    Raises:
        ServerVerificationError: the server is not ``server_id``.
        ConfigError: the identity or an argument is unusable.
        Unavailable: the server cannot be reached.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        server: str,
        identity: Identity,
        *,
        server_id: str | None = None,
        verify: Verify = Verify.SPIFFE_ID,
        tls_name: str | None = None,
        timeout: float = 30.0,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        try:
            host, _ = split_address(server)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        own = identity.material()
        self.spiffe_id: str = own.spiffe_id
        """The workload's own SPIFFE ID."""
        self.server_id: str = server_id or f"spiffe://{trust_domain_of(own.spiffe_id)}/taskmint"
        """The issuer's SPIFFE ID, verified."""
        td = trust_domain_of(self.server_id)
        self.timeout = timeout
        self._closed = False
        self.metadata: list[tuple[str, str]] = list(metadata)
        self._server = server
        self._identity = identity
        self._bridge: SpiffeBridge | None = SpiffeBridge(server, identity, self.server_id, td)
        try:
            self._bridge.check(None if verify is Verify.SPIFFE_ID else (tls_name or host))
        except ConnectionError as e:
            self._bridge.close()
            raise Unavailable(grpc.StatusCode.UNAVAILABLE, str(e), "connect") from None
        except ServerVerificationError:
            self._bridge.close()
            raise
        if verify is Verify.SPIFFE_ID:
            # The bridge's Unix path is no valid :authority; the server's
            # HTTP/2 layer refuses it. Name the issuer instead.
            self._channel = grpc.insecure_channel(
                self._bridge.target, [("grpc.default_authority", server)]
            )
        else:
            self._bridge.close()
            self._bridge = None
            m = identity.material(td)
            creds = grpc.ssl_channel_credentials(m.bundle_pem, m.key_pem, m.cert_chain_pem)
            options = [("grpc.ssl_target_name_override", tls_name)] if tls_name else []
            self._channel = grpc.secure_channel(server, creds, options)
        # The generated stubs are untyped; the replies are typed by the .pyi.
        self._issuer: Any = issuer_pb2_grpc.IssuerStub(self._channel)  # type: ignore[no-untyped-call]
        self._revocations: Any = revocations_pb2_grpc.RevocationsStub(self._channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> Client:  # noqa: PYI034 (typing.Self is 3.11+)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """:meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Closes the channel (and the bridge); open watchers end."""
        self._closed = True
        self._channel.close()
        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None

    # -- errors --------------------------------------------------------------

    def _error(self, e: grpc.RpcError, method: str) -> Exception:
        """The exception for a failed call: a refused server says so."""
        if (
            e.code() == grpc.StatusCode.UNAVAILABLE
            and self._bridge is not None
            and self._bridge.last_error is not None
        ):
            return self._bridge.last_error
        return from_grpc(e, method)

    def _unary(self, stub: Any, name: str, service: str, request: Message, reply: type[M]) -> M:
        try:
            call = getattr(stub, name)
            return cast(M, call(request, timeout=self.timeout, metadata=self.metadata))
        except grpc.RpcError as e:
            raise self._error(e, f"{service}.{name}") from None

    # -- tasks ---------------------------------------------------------------

    def begin_task(
        self,
        task_id: str,
        *,
        purpose: str = "",
        ticket: str = "",
        lifetime_seconds: int = 0,
        labels: dict[str, str] | None = None,
        owner: str = "",
        audiences: Iterable[str] = (),
    ) -> common_pb2.Task:
        """``Issuer.BeginTask``: begins a task with a hard deadline.

        Args:
            task_id: 1-128 characters of ``[A-Za-z0-9._:-]``, scoped to the caller.
            purpose: what the task is for.
            ticket: a ticket or change reference.
            lifetime_seconds: 0 = the configured default.
            labels: free-form labels.
            owner: the accountable owner, where policy lets the caller name one.
            audiences: restricts the task's JWTs to these audiences.

        Raises:
            AlreadyExists: the caller already holds ``task_id`` (a mint
                begins a task implicitly).
        """
        req = issuer_pb2.BeginTaskRequest(
            task_id=task_id,
            purpose=purpose,
            ticket=ticket,
            lifetime_seconds=lifetime_seconds,
            labels=labels or {},
            owner=owner,
            audiences=list(audiences),
        )
        r: issuer_pb2.BeginTaskResponse = self._unary(
            self._issuer, "BeginTask", "Issuer", req, issuer_pb2.BeginTaskResponse
        )
        return r.task

    def complete_task(self, task_id: str, holder: str = "") -> issuer_pb2.CompleteTaskResponse:
        """``Issuer.CompleteTask``: ends the task and revokes every credential
        of it (reason ``task_completed``). ``holder``: another workload's task
        (admins only)."""
        req = issuer_pb2.CompleteTaskRequest(
            task=common_pb2.TaskRef(task_id=task_id, holder=holder)
        )
        return self._unary(
            self._issuer, "CompleteTask", "Issuer", req, issuer_pb2.CompleteTaskResponse
        )

    def get_task(self, task_id: str, holder: str = "") -> issuer_pb2.GetTaskResponse:
        """``Issuer.GetTask``: the task and the state of each of its credentials."""
        req = issuer_pb2.GetTaskRequest(task=common_pb2.TaskRef(task_id=task_id, holder=holder))
        return self._unary(self._issuer, "GetTask", "Issuer", req, issuer_pb2.GetTaskResponse)

    def delegate_task(
        self,
        task_id: str,
        delegate: str,
        audiences: Iterable[str],
        *,
        lifetime_seconds: int = 0,
        child_task_id: str = "",
        holder: str = "",
    ) -> common_pb2.Task:
        """``Issuer.DelegateTask``: hands part of a task to another workload.

        Args:
            task_id: the parent task.
            delegate: SPIFFE ID of the workload that will hold the child.
            audiences: a non-empty subset of the parent's audiences.
            lifetime_seconds: 0 = until the parent's deadline.
            child_task_id: empty = the parent's id plus a random suffix.
            holder: the parent's holder when it is not the caller (admins).

        Returns:
            The child task, held by ``delegate``; its JWTs carry an ``act``
            chain naming the caller. Completing the parent revokes it.
        """
        req = issuer_pb2.DelegateTaskRequest(
            parent=common_pb2.TaskRef(task_id=task_id, holder=holder),
            delegate=delegate,
            audiences=list(audiences),
            lifetime_seconds=lifetime_seconds,
            task_id=child_task_id,
        )
        r = self._unary(
            self._issuer, "DelegateTask", "Issuer", req, issuer_pb2.DelegateTaskResponse
        )
        return r.task

    # -- credentials ---------------------------------------------------------

    def mint_jwt(
        self, task_id: str, audience: str, ttl_seconds: int = 0
    ) -> issuer_pb2.MintJwtResponse:
        """``Issuer.MintJwt``: a JWT-SVID for ``audience``, bound to this
        connection's SVID (``cnf.x5t#S256``). ``ttl_seconds`` 0 = the default.
        ``.token`` is the compact JWT; never log it whole."""
        req = issuer_pb2.MintJwtRequest(task_id=task_id, audience=audience, ttl_seconds=ttl_seconds)
        return self._unary(self._issuer, "MintJwt", "Issuer", req, issuer_pb2.MintJwtResponse)

    def mint_x509(self, task_id: str, ttl_seconds: int = 0) -> _csr.X509Credential:
        """``Issuer.MintX509``: generates a P-256 key and a CSR here and
        returns the per-task X.509-SVID with that key."""
        key = _csr.new_key()
        req = issuer_pb2.MintX509Request(
            task_id=task_id, csr=_csr.csr_der(key), ttl_seconds=ttl_seconds
        )
        r = self._unary(self._issuer, "MintX509", "Issuer", req, issuer_pb2.MintX509Response)
        return _csr.credential_from(r.credential, list(r.cert_chain), key)

    def renew_jwt(
        self, credential_id: str, ttl_seconds: int = 0, revoke_previous: bool = False
    ) -> issuer_pb2.RenewResponse:
        """``Issuer.Renew`` of a JWT: a fresh token for the same task and
        audience (``.token``), linked to its predecessor."""
        req = issuer_pb2.RenewRequest(
            credential_id=credential_id, ttl_seconds=ttl_seconds, revoke_previous=revoke_previous
        )
        return self._unary(self._issuer, "Renew", "Issuer", req, issuer_pb2.RenewResponse)

    def renew_x509(
        self, credential_id: str, ttl_seconds: int = 0, revoke_previous: bool = False
    ) -> _csr.X509Credential:
        """``Issuer.Renew`` of an X.509 credential, with a new key and CSR."""
        key = _csr.new_key()
        req = issuer_pb2.RenewRequest(
            credential_id=credential_id,
            csr=_csr.csr_der(key),
            ttl_seconds=ttl_seconds,
            revoke_previous=revoke_previous,
        )
        r = self._unary(self._issuer, "Renew", "Issuer", req, issuer_pb2.RenewResponse)
        return _csr.credential_from(r.credential, list(r.cert_chain), key, r.renewal_count)

    def revoke(
        self,
        *,
        credential_id: str = "",
        task_id: str = "",
        holder: str = "",
        spiffe_id: str = "",
        trust_domain: str = "",
        reason: str = "",
    ) -> issuer_pb2.RevokeResponse:
        """``Issuer.Revoke``: exactly one of ``credential_id``, ``task_id``
        (with ``holder`` for another workload's task), ``spiffe_id`` or
        ``trust_domain``."""
        targets = [t for t in (credential_id, task_id, spiffe_id, trust_domain) if t]
        if len(targets) != 1:
            raise ValueError(
                "revoke takes exactly one of credential_id, task_id, spiffe_id, trust_domain"
            )
        req = issuer_pb2.RevokeRequest(reason=reason)
        if credential_id:
            req.credential_id = credential_id
        elif task_id:
            req.task.CopyFrom(common_pb2.TaskRef(task_id=task_id, holder=holder))
        elif spiffe_id:
            req.spiffe_id = spiffe_id
        else:
            req.trust_domain = trust_domain
        return self._unary(self._issuer, "Revoke", "Issuer", req, issuer_pb2.RevokeResponse)

    # -- verifying -----------------------------------------------------------

    def check_status(self, credential_id: str) -> common_pb2.CheckStatusResponse:
        """``Revocations.CheckStatus``: the state of a credential (serial hex
        or jti)."""
        req = revocations_pb2.CheckStatusRequest(credential_id=credential_id)
        return self._unary(
            self._revocations, "CheckStatus", "Revocations", req, common_pb2.CheckStatusResponse
        )

    def trust_bundle(self) -> common_pb2.GetTrustBundleResponse:
        """``Revocations.GetTrustBundle``: the X.509 roots and the JWT keys
        (``spiffe_bundle_jwks``) that verify what the issuer mints."""
        req = common_pb2.GetTrustBundleRequest()
        return self._unary(
            self._revocations,
            "GetTrustBundle",
            "Revocations",
            req,
            common_pb2.GetTrustBundleResponse,
        )

    def crl(self) -> revocations_pb2.GetCrlResponse:
        """``Revocations.GetCrl``: the DER CRL of revoked X.509 credentials."""
        req = revocations_pb2.GetCrlRequest()
        return self._unary(
            self._revocations, "GetCrl", "Revocations", req, revocations_pb2.GetCrlResponse
        )

    # -- the revocation feed -------------------------------------------------

    def watch(
        self,
        after_seq: int | None = None,
        *,
        trust_domain: str = "",
        spiffe_id: str = "",
        task_id: str = "",
        subscriber: str = "",
        auto_resync: bool = False,
    ) -> Watcher:
        """Follows the revocation feed (see :mod:`taskmint.feed`).

        Args:
            after_seq: resume after this sequence; ``None`` = a snapshot first.
            trust_domain, spiffe_id, task_id: narrow what is sent.
            subscriber: the subscriber's name (for the server's log and for
                :meth:`Watcher.ack`).
            auto_resync: on a cursor older than the retained log, start over
                with a snapshot instead of raising ``ResyncRequired``.
        """
        req = revocations_pb2.WatchRevocationsRequest(
            trust_domain=trust_domain, spiffe_id=spiffe_id, task_id=task_id, subscriber=subscriber
        )
        if after_seq is not None:
            req.after_seq = after_seq
        return Watcher(self, req, auto_resync=auto_resync)

    def ack(self, subscriber: str, up_to_seq: int) -> int:
        """``Revocations.AckRevocations``: everything up to ``up_to_seq`` was
        enforced. Returns the subscriber's acknowledged sequence."""
        req = revocations_pb2.AckRevocationsRequest(subscriber=subscriber, up_to_seq=up_to_seq)
        r: revocations_pb2.AckRevocationsResponse = self._unary(
            self._revocations,
            "AckRevocations",
            "Revocations",
            req,
            revocations_pb2.AckRevocationsResponse,
        )
        return r.acked_seq


__all__ = ["Client", "RpcError", "Verify"]
