"""A Python client for taskmint, the per-task credential issuer.

Quick use::

    from taskmint import Client, Identity

    ident = Identity.from_files("certs/dev/agent.pem", "certs/dev/agent.key",
                                "certs/dev/bundle.pem")
    with Client("127.0.0.1:8443", ident) as c:
        c.begin_task("build-42", purpose="release build")
        jwt = c.mint_jwt("build-42", "https://ci.example.org")
        c.complete_task("build-42")   # revokes the token

The gRPC modules (``taskmint.v1``) are generated from the repository's
``proto/`` when the package is built.
"""

from .client import Client, Verify
from .csr import X509Credential
from .errors import (
    AlreadyExists,
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    FeedBehind,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ResyncRequired,
    RpcError,
    ServerVerificationError,
    TaskmintError,
    Unauthenticated,
    Unavailable,
)
from .feed import Event, Heartbeat, Reconnecting, Resynced, Synced, Watcher, WatchItem
from .identity import Identity, Material
from .jwtsvid import InvalidToken

__all__ = [
    "AlreadyExists",
    "Client",
    "ConfigError",
    "DeadlineExceeded",
    "Event",
    "FailedPrecondition",
    "FeedBehind",
    "Heartbeat",
    "Identity",
    "InvalidArgument",
    "InvalidToken",
    "Material",
    "NotFound",
    "PermissionDenied",
    "Reconnecting",
    "ResourceExhausted",
    "ResyncRequired",
    "Resynced",
    "RpcError",
    "ServerVerificationError",
    "Synced",
    "TaskmintError",
    "Unauthenticated",
    "Unavailable",
    "Verify",
    "WatchItem",
    "Watcher",
    "X509Credential",
]
