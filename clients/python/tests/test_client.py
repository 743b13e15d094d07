"""The Python client against a live dev server (see conftest.py)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import secrets
import subprocess
import sys
from pathlib import Path

import grpc
import jwt as pyjwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import taskmint
from taskmint import Client, Identity, Verify, jwtsvid
from taskmint.v1 import common_pb2, revocations_pb2_grpc

AGENT = "spiffe://example.org/workload/agent"
ISSUER = "spiffe://example.org/taskmint"


def agent(server) -> Identity:
    return Identity.from_files(
        server.file("agent.pem"), server.file("agent.key"), server.file("bundle.pem")
    )


def sidecar(server) -> Identity:
    return Identity.from_files(
        server.file("sidecar.pem"), server.file("sidecar.key"), server.file("bundle.pem")
    )


def task_id() -> str:
    return f"py-{secrets.token_hex(6)}"


# -- connect and verify the issuer -------------------------------------------


@pytest.mark.parametrize("verify", [Verify.SPIFFE_ID, Verify.DNS_NAME])
def test_connects_and_verifies_the_issuer(dev_server, verify):
    with Client(dev_server.addr, agent(dev_server), verify=verify) as c:
        assert c.spiffe_id == AGENT
        assert c.server_id == ISSUER
        assert c.trust_bundle().trust_domain == "example.org"


@pytest.mark.parametrize("verify", [Verify.SPIFFE_ID, Verify.DNS_NAME])
def test_a_wrong_expected_spiffe_id_is_refused(dev_server, verify):
    with pytest.raises(taskmint.ServerVerificationError) as e:
        Client(
            dev_server.addr,
            agent(dev_server),
            server_id="spiffe://example.org/other",
            verify=verify,
        )
    assert "spiffe://example.org/taskmint" in str(e.value)
    assert "spiffe://example.org/other" in str(e.value)


def test_a_server_outside_the_bundle_is_refused(dev_server, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "another root")])
    now = datetime.datetime.now(datetime.timezone.utc)
    other = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    bundle = tmp_path / "other.pem"
    bundle.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    ident = Identity.from_files(dev_server.file("agent.pem"), dev_server.file("agent.key"), bundle)
    with pytest.raises(taskmint.ServerVerificationError) as e:
        Client(dev_server.addr, ident)
    assert "certificate" in e.value.reason


def test_a_uri_only_serving_svid_verifies_by_spiffe_id(spire_like_server):
    with Client(spire_like_server.addr, agent(spire_like_server)) as c:
        assert c.trust_bundle().trust_domain == "example.org"
        assert c.mint_jwt(task_id(), "https://api.example.org").token
    with pytest.raises(taskmint.ServerVerificationError):
        Client(spire_like_server.addr, agent(spire_like_server), server_id="spiffe://example.org/x")


def test_grpcio_tls_needs_a_dns_san(spire_like_server, dev_server):
    # What users hit: grpcio checks DNS names only, and a URI-only SVID has
    # none. The client says so when it connects, with the way out.
    with pytest.raises(taskmint.ServerVerificationError) as e:
        Client(spire_like_server.addr, agent(spire_like_server), verify=Verify.DNS_NAME)
    assert "no DNS or IP SAN `127.0.0.1`" in e.value.reason
    assert "-dns 127.0.0.1" in e.value.reason
    # With a DNS SAN (the dev SVID has `localhost`) and the name to expect.
    with Client(
        dev_server.addr, agent(dev_server), verify=Verify.DNS_NAME, tls_name="localhost"
    ) as c:
        assert c.trust_bundle().trust_domain == "example.org"
    with pytest.raises(taskmint.ServerVerificationError) as e:
        Client(dev_server.addr, agent(dev_server), verify=Verify.DNS_NAME, tls_name="other.test")
    assert "no DNS or IP SAN `other.test`" in e.value.reason


def test_grpcio_alone_fails_on_a_uri_only_svid(spire_like_server):
    # The problem users hit, shown with grpcio alone: a URI-only serving SVID
    # fails grpcio's hostname verification.
    d = spire_like_server
    creds = grpc.ssl_channel_credentials(
        Path(d.file("bundle.pem")).read_bytes(),
        Path(d.file("agent.key")).read_bytes(),
        Path(d.file("agent.pem")).read_bytes(),
    )
    with grpc.secure_channel(d.addr, creds) as ch:
        stub = revocations_pb2_grpc.RevocationsStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.GetTrustBundle(common_pb2.GetTrustBundleRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Hostname Verification" in e.value.details()


def test_unreadable_identity_files_say_which(dev_server, tmp_path):
    with pytest.raises(taskmint.ConfigError) as e:
        Identity.from_files(
            tmp_path / "missing.pem", dev_server.file("agent.key"), dev_server.file("bundle.pem")
        )
    assert "missing.pem" in str(e.value)


# -- minting -----------------------------------------------------------------


def test_mint_jwt(dev_server):
    tid = task_id()
    with Client(dev_server.addr, agent(dev_server)) as c:
        r = c.mint_jwt(tid, "https://api.example.org", ttl_seconds=120)
        jwks = c.trust_bundle().spiffe_bundle_jwks
        claims = jwtsvid.verify(r.token, jwks, "https://api.example.org")
        assert claims["sub"] == AGENT
        assert claims["task_id"] == tid
        assert claims["task_holder"] == AGENT
        assert claims["jti"] == r.credential.id
        assert claims["exp"] - claims["iat"] <= 120
        leaf = x509.load_pem_x509_certificate(Path(dev_server.file("agent.pem")).read_bytes())
        thumb = base64.urlsafe_b64encode(
            hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).digest()
        ).rstrip(b"=")
        assert claims["cnf"]["x5t#S256"] == thumb.decode()
        assert r.credential.kind == common_pb2.CREDENTIAL_KIND_JWT
        # An independent JOSE library agrees on the signature.
        header = pyjwt.get_unverified_header(r.token)
        key = next(k for k in json.loads(jwks)["keys"] if k.get("kid") == header["kid"])
        pub = pyjwt.PyJWK({**key, "use": "sig"}, algorithm="ES256").key
        assert (
            pyjwt.decode(r.token, pub, algorithms=["ES256"], audience="https://api.example.org")[
                "sub"
            ]
            == AGENT
        )
        with pytest.raises(jwtsvid.InvalidToken):
            jwtsvid.verify(r.token, jwks, "https://other.example.org")
        with pytest.raises(jwtsvid.InvalidToken):
            jwtsvid.verify(r.token[:-4] + "AAAA", jwks, "https://api.example.org")


def test_mint_x509(dev_server):
    tid = task_id()
    with Client(dev_server.addr, agent(dev_server)) as c:
        cred = c.mint_x509(tid, ttl_seconds=300)
    leaf = cred.leaf
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [AGENT]
    assert format(leaf.serial_number, "x") == cred.credential.id.lstrip("0")
    assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == tid
    # The leaf holds the key generated here, and chains to the signing CA.
    assert leaf.public_key().public_numbers() == cred.key.public_key().public_numbers()
    signing_ca = x509.load_pem_x509_certificate(
        Path(dev_server.file("signing-ca.pem")).read_bytes()
    )
    leaf.verify_directly_issued_by(signing_ca)
    assert cred.credential.kind == common_pb2.CREDENTIAL_KIND_X509
    assert cred.credential.task_id == tid
    assert b"BEGIN CERTIFICATE" in cred.chain_pem() and b"PRIVATE KEY" in cred.key_pem()


def test_renew_both_kinds(dev_server):
    tid = task_id()
    with Client(dev_server.addr, agent(dev_server)) as c:
        j = c.mint_jwt(tid, "https://api.example.org")
        j2 = c.renew_jwt(j.credential.id, revoke_previous=True)
        assert j2.token and j2.credential.id != j.credential.id
        assert j2.renewal_count == 1
        old = c.check_status(j.credential.id)
        assert old.state == common_pb2.CREDENTIAL_STATE_REVOKED
        assert old.reason == "superseded"
        x = c.mint_x509(tid)
        x2 = c.renew_x509(x.credential.id)
        assert x2.renewal_count == 1
        assert x2.leaf.public_key().public_numbers() != x.leaf.public_key().public_numbers()
        assert c.check_status(x.credential.id).state == common_pb2.CREDENTIAL_STATE_ACTIVE


# -- the task lifecycle ------------------------------------------------------


def test_task_lifecycle(dev_server):
    tid = task_id()
    trace = [("traceparent", f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01")]
    with Client(dev_server.addr, agent(dev_server), metadata=trace) as c:
        task = c.begin_task(tid, purpose="python test", lifetime_seconds=600, labels={"k": "v"})
        assert task.holder == AGENT
        assert task.state == common_pb2.TASK_STATE_ACTIVE
        assert task.deadline - task.created_at == 600
        with pytest.raises(taskmint.AlreadyExists) as e:
            c.begin_task(tid)
        assert e.value.code == grpc.StatusCode.ALREADY_EXISTS and tid in e.value.message
        j = c.mint_jwt(tid, "https://api.example.org")
        x = c.mint_x509(tid)
        got = c.get_task(tid)
        assert {s.credential.id for s in got.credentials} == {j.credential.id, x.credential.id}
        assert all(s.status.state == common_pb2.CREDENTIAL_STATE_ACTIVE for s in got.credentials)
        done = c.complete_task(tid)
        assert done.task.state == common_pb2.TASK_STATE_COMPLETED
        assert done.revoked.revoked == 2
        for cred in (j.credential.id, x.credential.id):
            st = c.check_status(cred)
            assert st.state == common_pb2.CREDENTIAL_STATE_REVOKED
            assert st.reason == "task_completed"
        with pytest.raises(taskmint.RpcError) as e:
            c.mint_jwt(tid, "https://api.example.org")
        assert e.value.code != grpc.StatusCode.OK and tid in e.value.message


def test_delegation_and_its_revocation(dev_server):
    tid, aud = task_id(), "https://api.example.org"
    with Client(dev_server.addr, agent(dev_server)) as c:
        c.begin_task(tid, audiences=[aud])
        child = c.delegate_task(tid, "spiffe://example.org/workload/sidecar", [aud])
        assert child.holder == "spiffe://example.org/workload/sidecar"
        assert child.parent.task_id == tid and child.depth == 1
        with Client(dev_server.addr, sidecar(dev_server)) as s:
            token = s.mint_jwt(child.task_id, aud)
            claims = jwtsvid.verify(token.token, s.trust_bundle().spiffe_bundle_jwks, aud)
            assert claims["act"]["sub"] == AGENT
            c.complete_task(tid)  # the parent's end revokes the child's token
            st = s.check_status(token.credential.id)
            assert st.state == common_pb2.CREDENTIAL_STATE_REVOKED


def test_errors_carry_code_and_message(dev_server):
    with Client(dev_server.addr, agent(dev_server)) as c:
        with pytest.raises(taskmint.InvalidArgument) as e:
            c.mint_jwt("not a task id!", "https://api.example.org")
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.method == "Issuer.MintJwt"
        assert "task" in e.value.message
        with pytest.raises(taskmint.NotFound):
            c.get_task(task_id())
        with pytest.raises(taskmint.InvalidArgument) as e:
            c.mint_jwt(task_id(), "https://api.example.org", ttl_seconds=10**6)
        assert "exceeds the configured maximum" in e.value.message


# -- the revocation feed -----------------------------------------------------


def synced(w: taskmint.Watcher) -> int:
    for item in w:
        if isinstance(item, taskmint.Synced):
            return item.seq
    raise AssertionError("the feed ended before it synced")


def next_event(w: taskmint.Watcher) -> taskmint.Event:
    for item in w:
        if isinstance(item, taskmint.Event):
            return item
    raise AssertionError("the feed ended")


def test_feed_resumes_from_its_cursor(dev_server):
    with Client(dev_server.addr, agent(dev_server)) as c:
        w = c.watch()
        cursor = synced(w)
        assert w.cursor == cursor
        w.disconnect()  # cut off, as by a network failure
        tid = task_id()
        j = c.mint_jwt(tid, "https://api.example.org")
        c.complete_task(tid)  # revoked while nobody watched
        ev = next_event(w)  # reconnects after `cursor` and replays the miss
        assert ev.event.seq == cursor + 1
        assert ev.event.task_id == tid
        assert j.credential.id in ev.event.credential_ids
        assert ev.event.reason == "task_completed"
        assert w.cursor == ev.event.seq
        w.close()
        # A new subscription from the old cursor gets the same event first.
        again = c.watch(after_seq=cursor)
        assert next_event(again).event.seq == cursor + 1
        again.close()


def test_feed_reports_reconnecting_and_resumes(dev_server):
    with Client(dev_server.addr, agent(dev_server)) as c:
        w = c.watch(task_id="nothing-here")
        cursor = synced(w)
        w._stream.cancel()  # the stream breaks under the watcher
        item = w.next()
        assert isinstance(item, taskmint.Reconnecting)
        assert item.after_seq == cursor
        w.close()


def test_a_cursor_out_of_range_needs_a_resync(dev_server):
    with Client(dev_server.addr, agent(dev_server)) as c:
        w = c.watch(after_seq=10**12)
        with pytest.raises(taskmint.ResyncRequired) as e:
            w.next()
        assert "resync" in e.value.message
        w = c.watch(after_seq=10**12, auto_resync=True)
        assert isinstance(w.next(), taskmint.Resynced)
        assert synced(w) < 10**12
        w.close()


def test_an_expected_subscriber_acknowledges(dev_server):
    with Client(dev_server.addr, sidecar(dev_server)) as s:
        w = s.watch(subscriber="sidecar")
        cursor = synced(w)
        assert w.ack() == cursor
        w.close()
    with Client(dev_server.addr, agent(dev_server)) as c:
        with pytest.raises(taskmint.RpcError) as e:
            c.ack("sidecar", 1)
        assert isinstance(e.value, taskmint.PermissionDenied)
        assert "bound to another workload" in e.value.message


# -- the example -------------------------------------------------------------


def test_the_example_workload_runs(dev_server):

    example = Path(__file__).resolve().parents[1] / "examples" / "agent.py"
    out = subprocess.run(
        [
            sys.executable,
            str(example),
            "--server",
            dev_server.addr,
            "--svid",
            dev_server.file("agent.pem"),
            "--svid-key",
            dev_server.file("agent.key"),
            "--bundle",
            dev_server.file("bundle.pem"),
            "--task",
            "example-from-test",
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "status ACTIVE" in out.stdout
    assert "token status: REVOKED (task_completed)" in out.stdout
    assert "revoked 2 credential(s) of task example-from-test" in out.stdout
    # A wrong issuer ID: refused, with the reason, and a non-zero exit.
    bad = subprocess.run(
        [
            sys.executable,
            str(example),
            "--server",
            dev_server.addr,
            "--svid",
            dev_server.file("agent.pem"),
            "--svid-key",
            dev_server.file("agent.key"),
            "--bundle",
            dev_server.file("bundle.pem"),
            "--server-id",
            "spiffe://example.org/nope",
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert "not the expected `spiffe://example.org/nope`" in bad.stderr


def test_feed_resumes_across_a_server_restart(binary, tmp_path):
    from conftest import free_port, start, stop

    addr = f"127.0.0.1:{free_port()}"
    subprocess.run(
        [str(binary), "dev", "init", "--dir", str(tmp_path), "--listen", addr],
        check=True,
        capture_output=True,
    )
    cfg, log = tmp_path / "taskmint.toml", tmp_path / "serve.log"
    proc = start(binary, cfg, addr, log)
    ident = Identity.from_files(
        tmp_path / "agent.pem", tmp_path / "agent.key", tmp_path / "bundle.pem"
    )
    try:
        with Client(addr, ident) as c:
            w = c.watch()
            cursor = synced(w)
            stop(proc)  # the stream breaks; the watcher must say so and retry
            item = w.next()
            assert isinstance(item, taskmint.Reconnecting)
            assert item.after_seq == cursor
            proc = start(binary, cfg, addr, log)
            tid = task_id()
            c.mint_jwt(tid, "https://api.example.org")
            c.complete_task(tid)
            ev = next_event(w)
            assert ev.event.seq == cursor + 1 and ev.event.task_id == tid
            w.close()
    finally:
        stop(proc)


def test_closing_the_client_ends_its_watchers(dev_server):
    c = Client(dev_server.addr, agent(dev_server))
    w = c.watch()
    synced(w)
    c.close()
    assert list(w) == []
