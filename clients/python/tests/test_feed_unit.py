"""The watcher's reactions to statuses a live server rarely produces on
demand (ABORTED "fell behind, resume from your cursor"), against a scripted
stream. The live tests (test_client.py) cover the rest."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import taskmint
from taskmint.feed import Watcher
from taskmint.v1 import common_pb2, revocations_pb2


class Status(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class Stream:
    def __init__(self, items: list[Any]) -> None:
        self._items = iter(items)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        item = next(self._items)
        if isinstance(item, Exception):
            raise item
        return item

    def cancel(self) -> None:
        pass


def event(seq: int) -> revocations_pb2.WatchRevocationsResponse:
    return revocations_pb2.WatchRevocationsResponse(
        event=common_pb2.RevocationEvent(seq=seq, reason="revoked")
    )


def synced(seq: int) -> revocations_pb2.WatchRevocationsResponse:
    return revocations_pb2.WatchRevocationsResponse(synced=revocations_pb2.Synced(seq=seq))


class FakeClient:
    """Serves one scripted stream per WatchRevocations call and records the
    cursor each call asked for."""

    def __init__(self, streams: list[list[Any]]) -> None:
        self.closed = False
        self.metadata: list[tuple[str, str]] = []
        self._streams = iter(streams)
        self.asked: list[int | None] = []
        self._revocations = self

    def WatchRevocations(self, req: Any, metadata: Any = None) -> Stream:
        self.asked.append(req.after_seq if req.HasField("after_seq") else None)
        return Stream(next(self._streams))

    def _error(self, e: grpc.RpcError, method: str) -> Exception:
        return taskmint.errors.from_grpc(e, method)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Watcher, "MIN_BACKOFF", 0.0)


def test_fell_behind_resumes_from_the_cursor() -> None:
    behind = Status(
        grpc.StatusCode.ABORTED, "subscriber fell behind the feed; resume with after_seq=4"
    )
    fake = FakeClient([[synced(3), event(4), behind], [event(5), synced(5)]])
    req = revocations_pb2.WatchRevocationsRequest()
    w = Watcher(fake, req)  # type: ignore[arg-type]
    items = [w.next() for _ in range(5)]
    assert items[0] == taskmint.Synced(3)
    assert isinstance(items[1], taskmint.Event) and items[1].event.seq == 4
    assert items[2] == taskmint.Reconnecting(4, behind.details())
    assert isinstance(items[3], taskmint.Event) and items[3].event.seq == 5
    assert fake.asked == [None, 4]


def test_a_restarted_snapshot_does_not_repeat_events() -> None:
    down = Status(grpc.StatusCode.UNAVAILABLE, "connection reset")
    fake = FakeClient([[event(2), event(7), down], [event(2), event(7), event(9), synced(9)]])
    w = Watcher(fake, revocations_pb2.WatchRevocationsRequest())  # type: ignore[arg-type]
    seqs = []
    for item in w:
        if isinstance(item, taskmint.Event):
            seqs.append(item.event.seq)
        if isinstance(item, taskmint.Synced):
            break
    assert seqs == [2, 7, 9]
    assert fake.asked == [None, None]  # no cursor before the first `synced`


def test_out_of_range_raises_or_resyncs() -> None:
    old = Status(grpc.StatusCode.OUT_OF_RANGE, "cursor 1 is older than the retained log")
    req = revocations_pb2.WatchRevocationsRequest(after_seq=1)
    with pytest.raises(taskmint.ResyncRequired):
        Watcher(FakeClient([[old]]), req).next()  # type: ignore[arg-type]
    fake = FakeClient([[old], [event(8), synced(8)]])
    w = Watcher(fake, req, auto_resync=True)  # type: ignore[arg-type]
    assert isinstance(w.next(), taskmint.Resynced)
    assert w.next().event.seq == 8  # type: ignore[union-attr]
    assert fake.asked == [1, None]


def test_permission_denied_is_raised() -> None:
    denied = Status(grpc.StatusCode.PERMISSION_DENIED, "no policy permits watch")
    w = Watcher(FakeClient([[denied]]), revocations_pb2.WatchRevocationsRequest())  # type: ignore[arg-type]
    with pytest.raises(taskmint.PermissionDenied) as e:
        w.next()
    assert e.value.message == "no policy permits watch"
