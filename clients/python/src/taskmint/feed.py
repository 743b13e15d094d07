"""The revocation feed, followed across disconnects.

A :class:`Watcher` wraps ``Revocations.WatchRevocations`` and resumes from the
last sequence it delivered, so the caller sees every event once and in order
(the same contract as the Rust client's ``Watcher``):

* no cursor: a snapshot of every revocation still in force, then
  :class:`Synced`, then live events and heartbeats;
* a cursor: the events after it, replayed from the log, then :class:`Synced`
  and live events;
* the stream broke (server restart, network, ABORTED "fell behind, resume
  from your cursor"): wait with exponential backoff, yield
  :class:`Reconnecting`, resume from the cursor;
* OUT_OF_RANGE (the cursor is older than the retained log): raise
  :class:`~taskmint.errors.ResyncRequired`, or with ``auto_resync`` start over
  with a fresh snapshot and yield :class:`Resynced`;
* UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, UNIMPLEMENTED: raised.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from .errors import from_grpc
from .v1 import common_pb2, revocations_pb2

if TYPE_CHECKING:
    from .client import Client


@dataclass(frozen=True)
class Event:
    """A revocation: deny ``event.credential_ids`` until ``event.expires_at``."""

    event: common_pb2.RevocationEvent


@dataclass(frozen=True)
class Synced:
    """The snapshot or replay is done; live from here, caught up to ``seq``."""

    seq: int


@dataclass(frozen=True)
class Heartbeat:
    """The stream is alive; the feed's current sequence is ``seq``."""

    seq: int


@dataclass(frozen=True)
class Reconnecting:
    """The stream broke; it resumes after ``after_seq`` (``None``: a snapshot)."""

    after_seq: int | None
    reason: str


@dataclass(frozen=True)
class Resynced:
    """The cursor was too old: the watcher dropped it and takes a new snapshot,
    which may repeat events already seen (enforcers must treat them as
    idempotent)."""

    reason: str


WatchItem = Event | Synced | Heartbeat | Reconnecting | Resynced

_FATAL = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED,
}
_METHOD = "Revocations.WatchRevocations"


class Watcher:
    """A ``WatchRevocations`` subscription that survives disconnects.

    Iterate it (``for item in watcher``) or call :meth:`next`. :attr:`cursor`
    is the sequence everything up to which has been delivered; keep it to
    resume later with ``client.watch(after_seq=cursor)``.
    """

    MIN_BACKOFF = 0.1
    MAX_BACKOFF = 5.0

    def __init__(
        self,
        client: Client,
        request: revocations_pb2.WatchRevocationsRequest,
        auto_resync: bool = False,
    ) -> None:
        self._client = client
        self._request = request
        self._cursor: int | None = request.after_seq if request.HasField("after_seq") else None
        self._auto_resync = auto_resync
        self._stream: Any | None = None  # the call: an iterator that can be cancelled
        self._backoff = self.MIN_BACKOFF
        # Highest event delivered from a snapshot that broke before `synced`:
        # the next snapshot skips what was already delivered.
        self._snapshot_high = 0
        self._lock = threading.Lock()
        self._closed = False

    @property
    def cursor(self) -> int | None:
        """The sequence everything up to which was delivered (``None`` until
        the first snapshot is synced)."""
        return self._cursor

    def __iter__(self) -> Iterator[WatchItem]:
        while True:
            try:
                item = self.next()
            except StopIteration:
                return
            yield item

    def next(self) -> WatchItem:
        """The next item; reconnects as needed.

        Raises:
            ResyncRequired: the cursor is too old and ``auto_resync`` is off.
            RpcError: authentication, permission or a malformed request.
            StopIteration: after :meth:`close`, or once the client is closed.
        """
        while True:
            if self._closed or self._client.closed:
                raise StopIteration
            if self._stream is None:
                req = revocations_pb2.WatchRevocationsRequest()
                req.CopyFrom(self._request)
                if self._cursor is None:
                    req.ClearField("after_seq")
                else:
                    req.after_seq = self._cursor
                with self._lock:
                    self._stream = self._client._revocations.WatchRevocations(
                        req, metadata=self._client.metadata
                    )
            try:
                msg = next(self._stream)
            except StopIteration:
                return self._broke("the server ended the stream")
            except grpc.RpcError as e:
                if self._closed or self._client.closed:
                    raise StopIteration from None
                code = e.code()
                if code == grpc.StatusCode.OUT_OF_RANGE:
                    self._stream = None
                    if not self._auto_resync:
                        raise from_grpc(e, _METHOD) from None
                    self._cursor, self._snapshot_high = None, 0
                    return Resynced(e.details() or "cursor out of range")
                if code in _FATAL:
                    self._stream = None
                    raise self._client._error(e, _METHOD) from None
                return self._broke(e.details() or code.name)
            item = self._item(msg)
            if item is not None:
                return item

    def _item(self, msg: revocations_pb2.WatchRevocationsResponse) -> WatchItem | None:
        kind = msg.WhichOneof("msg")
        if kind == "event":
            seq = msg.event.seq
            # Snapshot events are not contiguous: the cursor moves only once
            # the stream is synced.
            if self._cursor is not None:
                self._cursor = seq
            elif seq <= self._snapshot_high:
                return None  # re-sent by a restarted snapshot
            else:
                self._snapshot_high = seq
            return Event(msg.event)
        if kind == "synced":
            self._cursor = msg.synced.seq
            self._backoff = self.MIN_BACKOFF
            return Synced(msg.synced.seq)
        if kind == "heartbeat":
            if self._cursor is not None:
                self._cursor = msg.heartbeat.seq
            return Heartbeat(msg.heartbeat.seq)
        return None

    def _broke(self, reason: str) -> Reconnecting:
        self._stream = None
        time.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, self.MAX_BACKOFF)
        return Reconnecting(self._cursor, reason)

    def disconnect(self) -> None:
        """Drops the current stream; the next :meth:`next` reconnects from the
        cursor (what a network failure would do)."""
        with self._lock:
            if self._stream is not None:
                self._stream.cancel()
                self._stream = None

    def ack(self, subscriber: str | None = None) -> int:
        """Acknowledges everything up to :attr:`cursor` as enforced.

        Args:
            subscriber: the name to acknowledge under; default: the
                ``subscriber`` the watch was opened with.

        Returns:
            The subscriber's acknowledged sequence after the call.
        """
        name = subscriber or self._request.subscriber
        if not name:
            raise ValueError("ack needs a subscriber name (watch(subscriber=...))")
        if self._cursor is None:
            raise ValueError("nothing to acknowledge before the feed is synced")
        return self._client.ack(name, self._cursor)

    def close(self) -> None:
        """Ends the subscription; iteration stops."""
        self._closed = True
        self.disconnect()
