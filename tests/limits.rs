//! The connection layer and the per-caller limits, seen from the wire: every
//! call is judged before its body is decoded, a refused connection gets one
//! answer and is closed, idle connections are closed, the stream cap is
//! advertised, a watch ends when its caller's SVID expires, every class of
//! call has its bucket, refusals are audited in aggregate, and what a
//! workload may hold is capped.
//!
//! Raw HTTP/2 (the `h2` crate) is used where a gRPC client would hide what
//! is being tested: the bytes sent, and when the server closes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rustls::pki_types::ServerName;
use taskmint::client::Identity;
use taskmint::devca::{DevRoot, Issued};
use taskmint::store::Store;
use tonic::Code;

/// Every method of the three services, and the health service's two.
const METHODS: [&str; 23] = [
    "/taskmint.v1.Issuer/MintX509",
    "/taskmint.v1.Issuer/MintJwt",
    "/taskmint.v1.Issuer/Renew",
    "/taskmint.v1.Issuer/Revoke",
    "/taskmint.v1.Issuer/BeginTask",
    "/taskmint.v1.Issuer/CompleteTask",
    "/taskmint.v1.Issuer/GetTask",
    "/taskmint.v1.Issuer/DelegateTask",
    "/taskmint.v1.Issuer/GetTrustBundle",
    "/taskmint.v1.Revocations/WatchRevocations",
    "/taskmint.v1.Revocations/AckRevocations",
    "/taskmint.v1.Revocations/CheckStatus",
    "/taskmint.v1.Revocations/GetCrl",
    "/taskmint.v1.Revocations/GetTrustBundle",
    "/taskmint.v1.Admin/ListGrants",
    "/taskmint.v1.Admin/ExportAudit",
    "/taskmint.v1.Admin/GetTaskTimeline",
    "/taskmint.v1.Admin/ListBreakGlass",
    "/taskmint.v1.Admin/MarkReviewed",
    "/taskmint.v1.Admin/GetDeliveryStatus",
    "/taskmint.v1.Admin/GetPolicyStatus",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

/// Bytes no protobuf message decodes from: field 2 as a string that is not
/// UTF-8, then a field with the reserved wire type 7.
const GARBAGE: &[u8] = &[0x12, 0x02, 0xff, 0xfe, 0x0f];

type Conn = tokio::task::JoinHandle<Result<(), h2::Error>>;

/// An HTTP/2 connection over TLS, presenting `who` (or no certificate).
async fn h2_connect(
    s: &TestServer,
    who: Option<Identity>,
) -> (h2::client::SendRequest<Bytes>, Conn) {
    let mut roots = rustls::RootCertStore::empty();
    for r in s.roots() {
        roots.add(r).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(taskmint::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match who {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    (send, tokio::spawn(conn))
}

/// One gRPC call with `body` as the message bytes; returns grpc-status and
/// grpc-message (from the headers of a trailers-only answer, or the trailers).
async fn raw_call(
    send: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    body: &[u8],
) -> (i32, String) {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut ready = send.clone().ready().await.unwrap();
    let (response, mut stream) = ready.send_request(req, false).unwrap();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    stream.send_data(Bytes::from(frame), true).unwrap();
    let response = response.await.unwrap();
    let status_of = |h: &http::HeaderMap| {
        h.get("grpc-status").map(|v| {
            let code = v.to_str().unwrap().parse().unwrap();
            let msg = h
                .get("grpc-message")
                .map(|m| percent_decode(m.to_str().unwrap()))
                .unwrap_or_default();
            (code, msg)
        })
    };
    if let Some(s) = status_of(response.headers()) {
        return s;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    status_of(&trailers).unwrap()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// Waits for the server to end the connection.
async fn closed_within(conn: Conn, limit: Duration) -> bool {
    tokio::time::timeout(limit, conn).await.is_ok()
}

async fn begin(
    c: &mut taskmint::client::Client,
    task: &str,
) -> Result<taskmint::grpc::pb::Task, tonic::Status> {
    c.begin_task(taskmint::grpc::pb::BeginTaskRequest {
        task_id: task.into(),
        purpose: "limits".into(),
        lifetime_seconds: 600,
        ..Default::default()
    })
    .await
}

fn short_lived(s: &TestServer, path: &str, seconds: i64) -> Issued {
    let mut p = DevRoot::svid_params(&format!("spiffe://{TD}/{path}"), 1).unwrap();
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds);
    s.root().sign(&p).unwrap()
}

async fn audit_rows(s: &TestServer) -> Vec<taskmint::audit::AuditEvent> {
    let store = s.store().await;
    let events = store.audit_after(0, 100_000).await.unwrap();
    store.close().await;
    events
}

#[tokio::test]
async fn every_method_refuses_a_caller_without_an_svid_before_decoding() {
    let mut s = start().await;
    let before = audit_rows(&s).await.len();
    for path in METHODS {
        let (mut send, conn) = h2_connect(&s, None).await;
        // Garbage that would be INVALID_ARGUMENT once decoded: the verdict
        // comes first, so it is never decoded.
        let (code, message) = raw_call(&mut send, path, GARBAGE).await;
        assert_eq!(code, Code::Unauthenticated as i32, "{path}: {message}");
        assert!(
            message.contains("no client certificate presented"),
            "{path}: {message}"
        );
        drop(send);
        assert!(
            closed_within(conn, Duration::from_secs(3)).await,
            "{path}: the refused connection stays open"
        );
    }
    assert_eq!(s.credential_count().await, 0);
    assert_eq!(audit_rows(&s).await.len(), before, "nothing stored");
    // Still serving.
    s.client("agent")
        .await
        .mint_jwt("after", "db", None)
        .await
        .unwrap();
    s.stop().await;
}

#[tokio::test]
async fn an_untrusted_svid_is_refused_before_decoding_and_disconnected() {
    let mut s = start().await;
    let stranger = DevRoot::new(TD)
        .unwrap()
        .sign(&DevRoot::svid_params(&format!("spiffe://{TD}/workload/agent"), 1).unwrap())
        .unwrap();
    let (mut send, conn) = h2_connect(&s, Some(identity(&stranger))).await;
    let (code, message) = raw_call(&mut send, "/taskmint.v1.Issuer/MintJwt", GARBAGE).await;
    assert_eq!(code, Code::Unauthenticated as i32, "{message}");
    assert!(
        message.contains("does not verify against the bundle"),
        "{message}"
    );
    drop(send);
    assert!(closed_within(conn, Duration::from_secs(3)).await);
    s.stop().await;
}

#[tokio::test]
async fn an_authenticated_garbage_request_is_invalid_argument_naming_the_message() {
    let mut s = start().await;
    let agent = read_identity(&s.path("agent.pem"), &s.path("agent.key"));
    let (mut send, _conn) = h2_connect(&s, Some(agent)).await;
    for path in METHODS.iter().filter(|p| p.starts_with("/taskmint")) {
        let (code, message) = raw_call(&mut send, path, GARBAGE).await;
        assert_eq!(code, Code::InvalidArgument as i32, "{path}: {message}");
        assert!(
            message.contains("Request` does not decode as protobuf: "),
            "{path}: {message}"
        );
        assert!(!message.contains("DecodeError"), "{path}: {message}");
    }
    assert_eq!(s.credential_count().await, 0);
    s.stop().await;
}

#[tokio::test]
async fn a_connection_without_a_certificate_that_sends_nothing_is_closed() {
    let mut s =
        start_with(|t| t.replace("handshake_timeout = \"10s\"", "handshake_timeout = \"1s\""))
            .await;
    let (_send, conn) = h2_connect(&s, None).await;
    assert!(
        closed_within(conn, Duration::from_secs(4)).await,
        "a refused connection is bounded by the handshake timeout"
    );
    s.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_busy_ones_are_not() {
    let mut s = start_with(|t| t.replace("idle_timeout = \"5m\"", "idle_timeout = \"1s\"")).await;
    let agent = read_identity(&s.path("agent.pem"), &s.path("agent.key"));
    let (mut send, conn) = h2_connect(&s, Some(agent)).await;
    let (code, _) = raw_call(&mut send, "/taskmint.v1.Issuer/GetTrustBundle", &[]).await;
    assert_eq!(code, 0);
    assert!(
        closed_within(conn, Duration::from_secs(4)).await,
        "idle for 1s: closed"
    );

    // A watch stream keeps its connection busy past the idle timeout.
    let mut sidecar = s.client("sidecar").await;
    let mut stream = sidecar.watch_once(Default::default()).await.unwrap();
    assert!(stream.message().await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut agent = s.client("agent").await;
    agent.mint_jwt("idle", "db", None).await.unwrap();
    agent.complete_task("idle").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the busy connection was kept")
        .unwrap();
    assert!(got.is_some());
    s.stop().await;
}

#[tokio::test]
async fn the_stream_cap_is_advertised_and_watchers_per_workload_are_capped() {
    let mut s = start_with(|t| {
        t.replace("max_concurrent_streams = 100", "max_concurrent_streams = 7")
            .replace("max_watch_streams = 16", "max_watch_streams = 2")
    })
    .await;
    let agent = read_identity(&s.path("agent.pem"), &s.path("agent.key"));
    let (mut send, _conn) = h2_connect(&s, Some(agent)).await;
    // The SETTINGS frame arrives with the first exchange.
    raw_call(&mut send, "/taskmint.v1.Issuer/GetTrustBundle", &[]).await;
    assert_eq!(send.current_max_send_streams(), 7);

    let mut sidecar = s.client("sidecar").await;
    let mut a = sidecar.watch_once(Default::default()).await.unwrap();
    let mut b = sidecar.watch_once(Default::default()).await.unwrap();
    a.message().await.unwrap();
    b.message().await.unwrap();
    let err = sidecar.watch_once(Default::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("limits.max_watch_streams"),
        "{}",
        err.message()
    );
    assert!(err.metadata().get("retry-after-ms").is_some());
    // Another workload has its own.
    s.client("agent")
        .await
        .watch_once(Default::default())
        .await
        .unwrap();
    // A stream that ends gives its slot back.
    drop(a);
    let mut again = false;
    for _ in 0..50 {
        if sidecar.watch_once(Default::default()).await.is_ok() {
            again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again, "the slot of an ended stream is given back");
    s.stop().await;
}

#[tokio::test]
async fn a_watch_ends_when_its_callers_svid_expires() {
    let mut s = start_with(|t| {
        t.replace(
            "heartbeat_interval = \"10s\"",
            "heartbeat_interval = \"200ms\"",
        )
    })
    .await;
    let svid = short_lived(&s, "workload/sidecar", 3);
    let mut c = s.client_with(Some(identity(&svid))).await;
    let mut stream = c.watch_once(Default::default()).await.unwrap();
    let started = std::time::Instant::now();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(other) => break other,
            Err(_) => panic!("the watch outlived its SVID"),
        }
    };
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{}", status.message());
    assert!(started.elapsed() < Duration::from_secs(6));
    s.stop().await;
}

#[tokio::test]
async fn a_watch_ends_when_its_trust_domain_bundle_stops_trusting_it() {
    let mut s = start_with(|t| {
        t.replace(
            "heartbeat_interval = \"10s\"",
            "heartbeat_interval = \"200ms\"",
        )
    })
    .await;
    let mut c = s.client("sidecar").await;
    let mut stream = c.watch_once(Default::default()).await.unwrap();
    stream.message().await.unwrap();
    // Replace the trust domain's bundle with an unrelated root.
    let other = DevRoot::new(TD).unwrap();
    std::fs::write(s.path("bundle.pem"), other.cert_pem()).unwrap();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(other) => break other,
            Err(_) => panic!("the watch outlived the bundle that trusted it"),
        }
    };
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains("does not verify against the bundle"),
        "{}",
        status.message()
    );
    s.stop().await;
}

/// Sets every bucket to one call per 100 s, burst 2.
fn tight(t: String) -> String {
    t.replace(
        "rate = { per_second = 100.0, burst = 200 }",
        "rate = { per_second = 0.01, burst = 2 }",
    )
    .replace(
        "rate = { per_second = 100000.0, burst = 100000 }",
        "rate = { per_second = 0.01, burst = 2 }",
    )
}

#[tokio::test]
async fn every_class_of_call_has_its_own_bucket() {
    let mut s = start_with(tight).await;
    let mut agent = s.client("agent").await;
    let mut admin = s.client("admin").await;
    let mut sidecar = s.client("sidecar").await;
    // Each class: two calls pass (or fail on their merits), the third is
    // refused before it is decoded, with the class and the wait named.
    let mut classes: Vec<(&str, tonic::Status)> = Vec::new();
    for _ in 0..2 {
        let _ = agent.mint_jwt("buckets", "db", None).await;
    }
    classes.push((
        "limits.rate:",
        agent.mint_jwt("buckets", "db", None).await.unwrap_err(),
    ));
    for _ in 0..2 {
        let _ = agent.get_task("buckets", "").await;
    }
    classes.push((
        "limits.read_rate",
        agent.get_task("buckets", "").await.unwrap_err(),
    ));
    for i in 0..2 {
        let _ = begin(&mut agent, &format!("b{i}")).await;
    }
    classes.push((
        "limits.task_rate",
        begin(&mut agent, "b3").await.unwrap_err(),
    ));
    for _ in 0..2 {
        let _ = sidecar.ack("s", 0).await;
    }
    classes.push(("limits.watch_rate", sidecar.ack("s", 0).await.unwrap_err()));
    for _ in 0..2 {
        let _ = admin.policy_status().await;
    }
    classes.push((
        "limits.admin_rate",
        admin.policy_status().await.unwrap_err(),
    ));
    for (key, err) in &classes {
        assert_eq!(err.code(), Code::ResourceExhausted, "{key}: {err:?}");
        assert!(err.message().contains(key), "{key}: {}", err.message());
        assert!(err.message().contains("retry after"), "{}", err.message());
        let ms: u64 = err
            .metadata()
            .get("retry-after-ms")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(ms > 0, "{key}");
    }
    s.stop().await;
}

#[tokio::test]
async fn refused_calls_spend_the_bucket_and_are_audited_in_aggregate() {
    let mut s = start_with(tight).await;
    let mut agent = s.client("agent").await;
    // Denied by policy (the dev policy permits 15 minutes at most): still
    // spends a token.
    for _ in 0..2 {
        let err = agent
            .mint_jwt("spend", "db", Some(Duration::from_secs(1800)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    let mut refused = 0u64;
    for _ in 0..200 {
        let err = agent.mint_jwt("spend", "db", None).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        refused += 1;
    }
    s.stop().await;
    // One event at the first refusal, the rest counted and written by the
    // shutdown flush: 200 refusals, two rows.
    let events: Vec<_> = audit_rows(&s)
        .await
        .into_iter()
        .filter(|e| e.body.kind == "limit")
        .collect();
    assert!(
        events.len() <= 2,
        "{} rows for {refused} refusals",
        events.len()
    );
    let counted: u64 = events
        .iter()
        .map(|e| {
            e.body
                .reason
                .split(' ')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(counted, refused);
    assert!(events.iter().all(|e| e.body.decision == "rate_limited"
        && e.body.subject == "rate:mint"
        && e.body.actor == format!("spiffe://{TD}/workload/agent")));
}

#[tokio::test]
async fn a_holder_cannot_hold_more_active_tasks_than_the_cap() {
    let mut s = start_with(|t| t.replace("max_active_tasks = 1000", "max_active_tasks = 3")).await;
    let mut agent = s.client("agent").await;
    for i in 0..3 {
        begin(&mut agent, &format!("cap-{i}")).await.unwrap();
    }
    let err = begin(&mut agent, "cap-3").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("limits.max_active_tasks"),
        "{}",
        err.message()
    );
    // A mint's implicit begin counts too.
    let err = agent
        .mint_jwt("cap-implicit", "db", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Ending one frees a place; another holder is not affected.
    agent.complete_task("cap-0").await.unwrap();
    begin(&mut agent, "cap-3").await.unwrap();
    let mut sidecar = s.client("sidecar").await;
    begin(&mut sidecar, "cap-0").await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn a_workload_cannot_take_more_subscriber_names_than_the_cap() {
    let mut s =
        start_with(|t| t.replace("max_subscriber_names = 16", "max_subscriber_names = 2")).await;
    let mut agent = s.client("agent").await;
    agent.ack("name-1", 0).await.unwrap();
    agent.ack("name-2", 0).await.unwrap();
    let err = agent.ack("name-3", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("limits.max_subscriber_names"),
        "{}",
        err.message()
    );
    // Its own names still work; the name stays free for others.
    agent.ack("name-1", 0).await.unwrap();
    s.client("sidecar").await.ack("name-3", 0).await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let mut s = start_with(|t| t.replace("max_connections = 10000", "max_connections = 2")).await;
    let agent = || read_identity(&s.path("agent.pem"), &s.path("agent.key"));
    let (mut a, _ca) = h2_connect(&s, Some(agent())).await;
    let (mut b, _cb) = h2_connect(&s, Some(agent())).await;
    assert_eq!(
        raw_call(&mut a, "/taskmint.v1.Issuer/GetTrustBundle", &[])
            .await
            .0,
        0
    );
    assert_eq!(
        raw_call(&mut b, "/taskmint.v1.Issuer/GetTrustBundle", &[])
            .await
            .0,
        0
    );
    // The third gets no TLS handshake.
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(3), async {
        use tokio::io::AsyncReadExt;
        let mut tcp = tcp;
        tcp.read(&mut buf).await
    })
    .await
    .expect("closed at once, not left hanging");
    assert!(matches!(read, Ok(0) | Err(_)));
    // Once one closes, a new one is served.
    drop(a);
    drop(_ca);
    let ok = eventually(Duration::from_secs(5), || async {
        let c = taskmint::client::Client::connect_with(
            &s.addr.to_string(),
            Some(agent()),
            s.roots(),
            spiffe::SpiffeId::new(format!("spiffe://{TD}/taskmint")).unwrap(),
        )
        .await;
        match c {
            Ok(mut c) => c.trust_bundle().await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(ok);
    s.stop().await;
}

#[tokio::test]
async fn one_workload_cannot_take_every_connection() {
    let mut s = start_with(|t| {
        t.replace(
            "max_connections_per_workload = 1000",
            "max_connections_per_workload = 2",
        )
    })
    .await;
    let agent = || read_identity(&s.path("agent.pem"), &s.path("agent.key"));
    let (mut a, _ca) = h2_connect(&s, Some(agent())).await;
    let (mut b, _cb) = h2_connect(&s, Some(agent())).await;
    assert_eq!(
        raw_call(&mut a, "/taskmint.v1.Issuer/GetTrustBundle", &[])
            .await
            .0,
        0
    );
    assert_eq!(
        raw_call(&mut b, "/taskmint.v1.Issuer/GetTrustBundle", &[])
            .await
            .0,
        0
    );
    let (mut c, cc) = h2_connect(&s, Some(agent())).await;
    let (code, message) = raw_call(&mut c, "/taskmint.v1.Issuer/GetTrustBundle", &[]).await;
    assert_eq!(code, Code::ResourceExhausted as i32, "{message}");
    assert!(
        message.contains("listen.max_connections_per_workload"),
        "{message}"
    );
    drop(c);
    assert!(
        closed_within(cc, Duration::from_secs(3)).await,
        "the third is closed"
    );
    // Another workload still gets in.
    let sidecar = read_identity(&s.path("sidecar.pem"), &s.path("sidecar.key"));
    let (mut d, _cd) = h2_connect(&s, Some(sidecar)).await;
    assert_eq!(
        raw_call(&mut d, "/taskmint.v1.Issuer/GetTrustBundle", &[])
            .await
            .0,
        0
    );
    s.stop().await;
}
