//! `kill -9` under mixed load, on the embedded SQLite store: a real
//! `taskmint serve` process is killed a few times while agents mint, begin
//! and complete tasks, revoke and check status. After the last restart,
//! every credential and every revocation the issuer acknowledged is stored,
//! the revocation sequence has no gap and no repeat, and the audit trail
//! verifies.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TD;
use taskmint::client::{Client, ClientConfig};
use taskmint::grpc::pb;
use taskmint::store::{SqliteStore, Store};

const BIN: &str = env!("CARGO_BIN_EXE_taskmint");
const ROUNDS: usize = 3;

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn serve(config: &std::path::Path, addr: &str) -> Serve {
    Serve(
        Command::new(BIN)
            .args([
                "serve",
                "--config",
                config.to_str().unwrap(),
                "--listen",
                addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn client(dir: &std::path::Path, addr: &str, who: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = Client::connect(&ClientConfig {
            server: addr.to_owned(),
            svid: dir.join(format!("{who}.pem")),
            svid_key: dir.join(format!("{who}.key")),
            bundle: dir.join("bundle.pem"),
            server_id: None,
        })
        .await;
        if let Ok(mut c) = c
            && c.trust_bundle().await.is_ok()
        {
            return c;
        }
        assert!(Instant::now() < deadline, "the issuer did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the load saw acknowledged.
#[derive(Default)]
struct Acked {
    credentials: Vec<String>,
    seqs: Vec<u64>,
    cut_off: usize,
}

/// An error from a call in flight when the process died: no answer, so
/// nothing acknowledged.
fn cut_off(e: &tonic::Status) -> bool {
    matches!(
        e.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

async fn mixed_load(mut c: Client, n: usize, round: usize, until: Instant) -> Acked {
    let mut a = Acked::default();
    let mut i = 0;
    while Instant::now() < until && a.cut_off == 0 {
        i += 1;
        let task = format!("r{round}-l{n}-{i}");
        let step = match (n + i) % 4 {
            // Mint twice on one task, then complete it (a revocation).
            0 => {
                async {
                    for _ in 0..2 {
                        let m = c.mint_jwt(&task, "db", None).await?;
                        a.credentials.push(m.credential.unwrap().id);
                    }
                    let done = c.complete_task(&task).await?;
                    a.seqs.extend(done.revoked.unwrap_or_default().seqs);
                    Ok::<_, tonic::Status>(())
                }
                .await
            }
            // Mint and revoke the credential.
            1 => {
                async {
                    let m = c.mint_jwt(&task, "db", None).await?;
                    let id = m.credential.unwrap().id;
                    a.credentials.push(id.clone());
                    let r = c
                        .revoke(pb::revoke_request::Target::CredentialId(id), "crash test")
                        .await?;
                    a.seqs.extend(r.seqs);
                    Ok(())
                }
                .await
            }
            // Mint and check its status (the "use" signal).
            2 => {
                async {
                    let m = c.mint_jwt(&task, "db", None).await?;
                    let id = m.credential.unwrap().id;
                    a.credentials.push(id.clone());
                    c.check_status(&id).await?;
                    Ok(())
                }
                .await
            }
            // An X.509 mint.
            _ => {
                async {
                    let key = rcgen::KeyPair::generate().unwrap();
                    let csr = rcgen::CertificateParams::default()
                        .serialize_request(&key)
                        .unwrap()
                        .der()
                        .to_vec();
                    let m = c.mint_x509(&task, csr, None).await?;
                    a.credentials.push(m.credential.unwrap().id);
                    Ok(())
                }
                .await
            }
        };
        if let Err(e) = step {
            assert!(cut_off(&e), "a refusal that is not a crash: {e:?}");
            a.cut_off += 1;
        }
    }
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_mixed_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let workloads: Vec<String> = ["agent", "sidecar", "admin"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    taskmint::devca::init(dir.path(), TD, &workloads, "127.0.0.1:0", false).unwrap();
    let config = dir.path().join("taskmint.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "rate = { per_second = 100.0, burst = 200 }",
        "rate = { per_second = 100000.0, burst = 100000 }",
    );
    std::fs::write(&config, common::raise_call_limits(text)).unwrap();

    let mut acked = Acked::default();
    for round in 0..ROUNDS {
        let addr = free_addr();
        let serve_proc = serve(&config, &addr);
        let mut load = Vec::new();
        let until = Instant::now() + Duration::from_secs(30);
        for n in 0..4 {
            let c = client(dir.path(), &addr, "agent").await;
            load.push(tokio::spawn(mixed_load(c, n, round, until)));
        }
        // Let the load run a while, different each round.
        tokio::time::sleep(Duration::from_millis(700 + 300 * round as u64)).await;
        drop(serve_proc); // SIGKILL, then reaped
        for l in load {
            let a = l.await.unwrap();
            acked.credentials.extend(a.credentials);
            acked.seqs.extend(a.seqs);
            acked.cut_off += a.cut_off;
        }
    }
    assert!(acked.cut_off > 0, "the kills hit calls in flight");
    assert!(
        acked.credentials.len() > 30,
        "{} mints",
        acked.credentials.len()
    );
    assert!(acked.seqs.len() > 5, "{} revocations", acked.seqs.len());

    // One more start: it recovers the store as it was left.
    let addr = free_addr();
    let serve_proc = serve(&config, &addr);
    let mut c = client(dir.path(), &addr, "agent").await;
    c.mint_jwt("after-the-last-kill", "db", None).await.unwrap();
    drop(serve_proc);

    let store = SqliteStore::open(&dir.path().join("data/taskmint.db"))
        .await
        .unwrap();
    for id in &acked.credentials {
        assert!(
            store.credential(id).await.unwrap().is_some(),
            "acknowledged credential {id} lost"
        );
    }
    let head = store.current_seq().await.unwrap();
    let events = store.events_after(0, u32::MAX).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=head).collect::<Vec<_>>(),
        "gap-free, in order, once"
    );
    let stored: BTreeSet<u64> = seqs.into_iter().collect();
    for s in &acked.seqs {
        assert!(stored.contains(s), "acknowledged revocation seq {s} lost");
    }
    store.close().await;

    let verify = Command::new(BIN)
        .args(["audit", "verify", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}
