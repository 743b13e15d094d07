#!/usr/bin/env python3
"""An example workload: one task, one token, used, then revoked.

    python examples/agent.py --server 127.0.0.1:8443 \\
        --svid certs/dev/agent.pem --svid-key certs/dev/agent.key --bundle certs/dev/bundle.pem

or, with a SPIRE agent: ``--workload-api unix:///run/spire/agent.sock``.
Options fall back to the CLI's variables (TASKMINT_SERVER, TASKMINT_SVID,
TASKMINT_SVID_KEY, TASKMINT_BUNDLE, SPIFFE_ENDPOINT_SOCKET).

Steps: connect (verifying the issuer's SPIFFE ID), subscribe to the revocation
feed for the task, begin the task, mint a JWT-SVID and an X.509-SVID, use the
token (verify its signature and claims as a relying party would, and check
that its status is active), complete the task, then show the token is
revoked: by its status and by the event on the feed. Exits non-zero, with the
reason, if any step does not hold.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from typing import NoReturn

from taskmint import Client, Event, Identity, Synced, TaskmintError, Verify, Watcher, jwtsvid
from taskmint.v1 import common_pb2


def fail(msg: str) -> NoReturn:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def expect(cond: bool, what: str) -> None:
    if not cond:
        fail(what)


def next_of(w: Watcher, kind: type) -> object:
    for item in w:
        if isinstance(item, kind):
            return item
    fail("the revocation feed ended")


def main() -> None:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default=env("TASKMINT_SERVER", "127.0.0.1:8443"))
    p.add_argument("--svid", default=env("TASKMINT_SVID", "certs/dev/agent.pem"))
    p.add_argument("--svid-key", default=env("TASKMINT_SVID_KEY", "certs/dev/agent.key"))
    p.add_argument("--bundle", default=env("TASKMINT_BUNDLE", "certs/dev/bundle.pem"))
    p.add_argument(
        "--workload-api",
        default=env("SPIFFE_ENDPOINT_SOCKET"),
        help="take the SVID from this Workload API socket instead of files",
    )
    p.add_argument("--server-id", help="expected SPIFFE ID of the issuer")
    p.add_argument("--verify", choices=[v.value for v in Verify], default=Verify.SPIFFE_ID.value)
    p.add_argument("--task", default=f"example-{secrets.token_hex(4)}")
    p.add_argument("--aud", default="https://api.example.org")
    a = p.parse_args()

    ident = (
        Identity.from_workload_api(a.workload_api)
        if a.workload_api
        else Identity.from_files(a.svid, a.svid_key, a.bundle)
    )
    with Client(a.server, ident, server_id=a.server_id, verify=Verify(a.verify)) as c:
        print(f"connected as {c.spiffe_id} to {c.server_id} (verified)")

        feed = c.watch(task_id=a.task, subscriber="example")
        start = next_of(feed, Synced).seq  # type: ignore[attr-defined]
        print(f"feed synced at seq {start}")

        task = c.begin_task(a.task, purpose="example", lifetime_seconds=300)
        print(
            f"task {task.task_id} begun, held by {task.holder}, owner {task.owner or '-'}, "
            f"deadline {task.deadline}"
        )

        jwt = c.mint_jwt(a.task, a.aud, ttl_seconds=120)
        print(
            f"minted JWT-SVID {jwt.credential.id} for {a.aud}, expires {jwt.credential.expires_at}"
        )
        cert = c.mint_x509(a.task, ttl_seconds=120)
        print(
            f"minted X.509-SVID serial {cert.credential.id}, subject {cert.leaf.subject.rfc4514_string()}"
        )

        # Use the token as a relying party would: signature, claims, status.
        claims = jwtsvid.verify(jwt.token, c.trust_bundle().spiffe_bundle_jwks, a.aud)
        expect(claims["sub"] == c.spiffe_id, f"sub is {claims['sub']}")
        expect(claims["task_id"] == a.task, f"task_id is {claims['task_id']}")
        expect(
            "x5t#S256" in claims.get("cnf", {}), "the token is not bound to the mTLS certificate"
        )
        status = c.check_status(jwt.credential.id)
        expect(
            status.state == common_pb2.CREDENTIAL_STATE_ACTIVE,
            f"status is {common_pb2.CredentialState.Name(status.state)}",
        )
        print(
            f"token verified: sub={claims['sub']} aud={claims['aud']} task_id={claims['task_id']}; "
            "status ACTIVE"
        )

        done = c.complete_task(a.task)
        print(f"task completed: {done.revoked.message}")

        status = c.check_status(jwt.credential.id)
        expect(
            status.state == common_pb2.CREDENTIAL_STATE_REVOKED,
            f"after completion the status is {common_pb2.CredentialState.Name(status.state)}",
        )
        print(f"token status: REVOKED ({status.reason})")

        event = next_of(feed, Event).event  # type: ignore[attr-defined]
        expect(
            jwt.credential.id in event.credential_ids
            and cert.credential.id in event.credential_ids,
            f"the feed event names {list(event.credential_ids)}",
        )
        print(
            f"feed: seq {event.seq} revoked {len(event.credential_ids)} credential(s) of task "
            f"{event.task_id} ({event.reason})"
        )
        feed.close()


if __name__ == "__main__":
    try:
        main()
    except TaskmintError as e:
        fail(str(e))
