//! Side by side with cfssl: the same P-256 CSRs, the same concurrency, the
//! same loopback, against `cfssl serve`'s `/api/v1/cfssl/sign` (HTTP/1.1,
//! keep-alive, one connection per caller) and taskmint's `MintX509` (mTLS
//! gRPC, one connection per caller). cfssl signs plain certificates from
//! the CSR; it does not produce SPIFFE certificates, authenticate callers,
//! evaluate policy or keep an audit trail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::Serialize;

use super::load::percentile;
use super::proc_stats::cpu_seconds;

/// One cfssl load step.
#[derive(Debug, Clone, Serialize)]
pub struct CfsslRow {
    /// Concurrent callers.
    pub concurrency: usize,
    /// Certificates signed in the window.
    pub certificates: u64,
    /// Failed calls.
    pub errors: u64,
    /// Certificates per second.
    pub throughput: f64,
    /// Latency, ms.
    pub p50_ms: f64,
    /// 99th, ms.
    pub p99_ms: f64,
    /// cfssl CPU per certificate, us (when its pid is known).
    pub server_cpu_us: f64,
}

fn pem_csr(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE REQUEST-----\n");
    out
}

/// Drives `cfssl serve` at `url` (e.g. `http://127.0.0.1:8888`) with
/// `concurrency` callers for `window`.
pub async fn run(
    url: &str,
    profile: &str,
    csrs: Arc<Vec<Vec<u8>>>,
    concurrency: usize,
    window: Duration,
    pid: Option<u32>,
) -> anyhow::Result<CfsslRow> {
    let uri: hyper::Uri = format!("{}/api/v1/cfssl/sign", url.trim_end_matches('/')).parse()?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("--cfssl needs http://host:port"))?
        .to_string();
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        csrs.iter()
            .map(|d| {
                Bytes::from(
                    serde_json::json!({"certificate_request": pem_csr(d), "profile": profile})
                        .to_string(),
                )
            })
            .collect(),
    );
    let cpu0 = pid.and_then(cpu_seconds);
    let started = Instant::now();
    let deadline = started + window;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (uri, authority, bodies) = (uri.clone(), authority.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&authority).await?;
            stream.set_nodelay(true)?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await?;
            tokio::spawn(conn);
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut n = i;
            while Instant::now() < deadline {
                let req = hyper::Request::post(uri.clone())
                    .header(hyper::header::HOST, authority.as_str())
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(bodies[n % bodies.len()].clone()))?;
                n += 1;
                let t0 = Instant::now();
                send.ready().await?;
                let resp = send.send_request(req).await?;
                let ok = resp.status().is_success();
                let body = resp.into_body().collect().await?.to_bytes();
                let signed = ok
                    && serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.pointer("/result/certificate").cloned())
                        .is_some();
                if signed {
                    lat.push(t0.elapsed().as_secs_f64() * 1e3);
                } else {
                    errors += 1;
                    if errors == 1 {
                        tracing::warn!(body = %String::from_utf8_lossy(&body), "cfssl refused a CSR");
                    }
                }
            }
            Ok::<_, anyhow::Error>((lat, errors))
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        lat.extend(l);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = match (pid.and_then(cpu_seconds), cpu0) {
        (Some(b), Some(a)) => b - a,
        _ => f64::NAN,
    };
    lat.sort_by(f64::total_cmp);
    let n = lat.len() as u64;
    Ok(CfsslRow {
        concurrency,
        certificates: n,
        errors,
        throughput: n as f64 / secs,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        server_cpu_us: cpu * 1e6 / n.max(1) as f64,
    })
}
