//! Request validation from protobuf, through the real handlers: the first
//! input byte picks an RPC of the three services, the second the caller (a
//! workload or an admin), the rest is decoded as that RPC's request message
//! with prost (as tonic's codec does) and handed to the service's handler on
//! a connection authenticated with a dev SVID. Handlers decode, validate into
//! domain requests, run the issuer against a SQLite store and map the error
//! to a status in `grpc/status.rs`, all as served.
//!
//! Whatever the request says, the answer is the caller's fault or a success:
//! INTERNAL, UNKNOWN or DATA_LOSS (a bug, or a store refusing what the
//! validation let through) are crashes.
//!
//! The store keeps what earlier inputs wrote (tasks, credentials, audit), so
//! later inputs reach the paths of existing tasks; a crash found late in a
//! run may need the earlier inputs to reproduce. It lives in
//! `taskmint-fuzz-<pid>-*` under `$TMPDIR`, else `/dev/shm`; a run removes
//! the directories of runs that ended.
#![no_main]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use taskmint::config::Config;
use taskmint::grpc::auth::ConnInfo;
use taskmint::identity::Caller;
use taskmint::grpc::pb;
use taskmint::grpc::pb::admin_server::Admin as _;
use taskmint::grpc::pb::issuer_server::Issuer as _;
use taskmint::grpc::pb::revocations_server::Revocations as _;
use taskmint::grpc::{AdminService, IssuerService, RevocationsService};
use taskmint::server::Server;
use taskmint::tls::{MaterialSources, TlsMaterial};
use tonic::{Code, Request, Status};

struct Harness {
    rt: tokio::runtime::Runtime,
    issuer: IssuerService,
    revocations: RevocationsService,
    admin: AdminService,
    /// A workload of the `agents` group, and the configured admin.
    callers: [Caller; 2],
    _server: Server,
    _dir: tempfile::TempDir,
}

/// Prefix of the store directories, followed by the fuzzing process's id.
const DIR_PREFIX: &str = "taskmint-fuzz-";

/// Where the store lives: `$TMPDIR` when set, else tmpfs when there is one
/// (SQLite syncs every commit), else the system's temporary directory.
fn base_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    match std::env::var_os("TMPDIR") {
        Some(t) => PathBuf::from(t),
        None if shm.is_dir() => shm.to_owned(),
        None => std::env::temp_dir(),
    }
}

/// libFuzzer leaves with `exit`, which drops no static: the directory of
/// an ended run stays behind. Each run removes those whose process is gone.
fn remove_ended_runs(base: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let base = base_dir();
    remove_ended_runs(&base);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
        .tempdir_in(&base)
        .expect("a temporary directory");
    let workloads: Vec<String> = ["agent-1", "admin"].map(String::from).to_vec();
    let init = taskmint::devca::init(dir.path(), "example.org", &workloads, "127.0.0.1:0", false)
        .expect("a dev trust domain");
    let mut cfg = Config::load(&init.config).expect("the dev config loads");
    // Rate limits are taken by the gRPC guard, which this harness does not
    // go through; raised all the same so that nothing here depends on them.
    for r in [
        &mut cfg.limits.rate,
        &mut cfg.limits.task_rate,
        &mut cfg.limits.read_rate,
        &mut cfg.limits.watch_rate,
        &mut cfg.limits.admin_rate,
    ] {
        r.per_second = 1e9;
        r.burst = u32::MAX;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let material: Arc<TlsMaterial> =
        TlsMaterial::load(MaterialSources::from_config(&cfg).expect("TLS sources"))
            .expect("TLS material");
    let server = rt.block_on(Server::build(cfg)).expect("the server builds");
    let issuer = server.issuer().clone();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let conn = |name: &str| {
        let (_, cert, _) = init.workloads.iter().find(|(n, _, _)| n == name).unwrap();
        let chain = taskmint::pem::certs(&std::fs::read(cert).unwrap()).unwrap();
        // The caller the guard layer would admit for this SVID.
        ConnInfo::judge(peer, chain, &material, std::time::Duration::from_secs(300))
            .caller(&material)
            .expect("a dev workload authenticates")
    };
    let h = Harness {
        issuer: IssuerService::new(issuer.clone()),
        revocations: RevocationsService::new(issuer.clone()),
        admin: AdminService::new(issuer),
        callers: [conn("agent-1"), conn("admin")],
        rt,
        _server: server,
        _dir: dir,
    };
    // The harness must reach the handlers' validation, not stop at
    // authentication: a well-formed call by each caller succeeds.
    let begin = pb::BeginTaskRequest {
        task_id: "harness-check".into(),
        ..Default::default()
    };
    h.rt.block_on(h.issuer.begin_task(request(begin, &h.callers[0])))
        .expect("the agent's BeginTask succeeds");
    h.rt.block_on(
        h.admin
            .get_policy_status(request(pb::GetPolicyStatusRequest {}, &h.callers[1])),
    )
    .expect("the admin's GetPolicyStatus succeeds");
    h
});

fn request<M>(msg: M, caller: &Caller) -> Request<M> {
    let mut req = Request::new(msg);
    req.extensions_mut().insert(caller.clone());
    req
}

fn check<T>(rpc: &str, result: Result<T, Status>) {
    if let Err(s) = result {
        assert!(
            !matches!(s.code(), Code::Internal | Code::Unknown | Code::DataLoss),
            "{rpc}: {:?}: {}",
            s.code(),
            s.message()
        );
    }
}

macro_rules! rpc {
    ($h:expr, $conn:expr, $body:expr, $svc:ident . $method:ident($msg:ty)) => {{
        let Ok(msg) = <$msg>::decode($body) else {
            return;
        };
        let result = $h.rt.block_on($h.$svc.$method(request(msg, $conn)));
        check(stringify!($method), result.map(|_| ()));
    }};
}

fuzz_target!(|data: &[u8]| {
    let [which, who, body @ ..] = data else {
        return;
    };
    let h = &*HARNESS;
    let conn = &h.callers[usize::from(*who & 1)];
    match which % 20 {
        0 => rpc!(h, conn, body, issuer.mint_x509(pb::MintX509Request)),
        1 => rpc!(h, conn, body, issuer.mint_jwt(pb::MintJwtRequest)),
        2 => rpc!(h, conn, body, issuer.renew(pb::RenewRequest)),
        3 => rpc!(h, conn, body, issuer.revoke(pb::RevokeRequest)),
        4 => rpc!(h, conn, body, issuer.begin_task(pb::BeginTaskRequest)),
        5 => rpc!(h, conn, body, issuer.complete_task(pb::CompleteTaskRequest)),
        6 => rpc!(h, conn, body, issuer.get_task(pb::GetTaskRequest)),
        7 => rpc!(h, conn, body, issuer.delegate_task(pb::DelegateTaskRequest)),
        8 => rpc!(
            h,
            conn,
            body,
            revocations.watch_revocations(pb::WatchRevocationsRequest)
        ),
        9 => rpc!(
            h,
            conn,
            body,
            revocations.ack_revocations(pb::AckRevocationsRequest)
        ),
        10 => rpc!(
            h,
            conn,
            body,
            revocations.check_status(pb::CheckStatusRequest)
        ),
        11 => rpc!(h, conn, body, revocations.get_crl(pb::GetCrlRequest)),
        12 => rpc!(h, conn, body, admin.list_grants(pb::ListGrantsRequest)),
        13 => rpc!(h, conn, body, admin.export_audit(pb::ExportAuditRequest)),
        14 => rpc!(
            h,
            conn,
            body,
            admin.get_task_timeline(pb::GetTaskTimelineRequest)
        ),
        15 => rpc!(
            h,
            conn,
            body,
            admin.list_break_glass(pb::ListBreakGlassRequest)
        ),
        16 => rpc!(h, conn, body, admin.mark_reviewed(pb::MarkReviewedRequest)),
        17 => rpc!(
            h,
            conn,
            body,
            admin.get_delivery_status(pb::GetDeliveryStatusRequest)
        ),
        18 => rpc!(
            h,
            conn,
            body,
            admin.get_policy_status(pb::GetPolicyStatusRequest)
        ),
        _ => rpc!(
            h,
            conn,
            body,
            issuer.get_trust_bundle(pb::GetTrustBundleRequest)
        ),
    }
});
