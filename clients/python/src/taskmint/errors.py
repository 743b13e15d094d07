"""Exceptions raised by the taskmint client.

Every failed call raises a :class:`RpcError` subclass chosen by the gRPC status
code, carrying the code, the server's message and the method; set-up problems
(files, identities) raise :class:`ConfigError`, and a server that is not the
expected issuer raises :class:`ServerVerificationError`.
"""

from __future__ import annotations

import grpc


class TaskmintError(Exception):
    """Base class of every error this package raises."""


class ConfigError(TaskmintError):
    """A file, SPIFFE ID or option given to the client is unusable."""


class ServerVerificationError(TaskmintError):
    """The server is not the expected issuer.

    Raised when its certificate does not chain to the trust bundle, or its
    SPIFFE ID (the URI SAN of its serving SVID) is not the expected one.
    """

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(f"cannot verify the issuer at `{server}`: {reason}")
        #: The address that was dialled.
        self.server = server
        #: Why it was refused.
        self.reason = reason


class RpcError(TaskmintError):
    """A call failed with a gRPC status.

    Attributes:
        code: the gRPC status code.
        message: the server's message (it names the problem: the rule, the
            limit or the policy that refused the call).
        method: the RPC, e.g. ``Issuer.MintJwt``.
    """

    def __init__(self, code: grpc.StatusCode, message: str, method: str) -> None:
        super().__init__(f"{method}: {code.name}: {message}")
        self.code = code
        self.message = message
        self.method = method


class Unauthenticated(RpcError):
    """UNAUTHENTICATED: the caller's SVID was refused (the message names the rule)."""


class PermissionDenied(RpcError):
    """PERMISSION_DENIED: policy does not permit the call."""


class InvalidArgument(RpcError):
    """INVALID_ARGUMENT: a field of the request is malformed or over a limit."""


class NotFound(RpcError):
    """NOT_FOUND: no such task or credential."""


class AlreadyExists(RpcError):
    """ALREADY_EXISTS: e.g. the task was already begun."""


class FailedPrecondition(RpcError):
    """FAILED_PRECONDITION: the state forbids it, e.g. the task has ended."""


class ResourceExhausted(RpcError):
    """RESOURCE_EXHAUSTED: a rate limit or holding cap; retry later."""


class Unavailable(RpcError):
    """UNAVAILABLE: the server cannot be reached or is shutting down."""


class DeadlineExceeded(RpcError):
    """DEADLINE_EXCEEDED: the call took longer than its timeout."""


class FeedBehind(RpcError):
    """ABORTED: the subscriber fell behind the feed; resume from its cursor."""


class ResyncRequired(RpcError):
    """OUT_OF_RANGE: the feed cursor is older than the retained log (or ahead
    of it); watch again without a cursor to take a fresh snapshot."""


_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.ABORTED: FeedBehind,
    grpc.StatusCode.OUT_OF_RANGE: ResyncRequired,
}


def from_grpc(err: grpc.RpcError, method: str) -> RpcError:
    """The :class:`RpcError` subclass for a grpcio error raised by ``method``."""
    code: grpc.StatusCode | None = err.code() if hasattr(err, "code") else None
    message: str = (err.details() if hasattr(err, "details") else None) or ""
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    return _BY_CODE.get(code, RpcError)(code, message, method)
