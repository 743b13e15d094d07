//! A throwaway PostgreSQL for tests, shared by the store's unit tests and
//! the multi-replica integration tests: `initdb` and `pg_ctl` in a temporary
//! directory on a free port, run as the `postgres` user when the tests run
//! as root (the server refuses to run as root). A watcher process stops the
//! cluster and removes its directory once the test process has exited, since
//! nothing in the process runs at exit. `TASKMINT_TEST_POSTGRES_URL` names a
//! server to use instead; with neither, a test says it was skipped — unless
//! `TASKMINT_REQUIRE_POSTGRES=1`, when it fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sqlx::Connection;

const SKIPPED: &str =
    "skipped: PostgreSQL not available (install postgresql or set TASKMINT_TEST_POSTGRES_URL)";

/// Says the test was skipped, or fails it when PostgreSQL is required.
pub fn skip() {
    if std::env::var("TASKMINT_REQUIRE_POSTGRES").as_deref() == Ok("1") {
        panic!("{}", SKIPPED.replace("skipped: ", ""));
    }
    eprintln!("{SKIPPED}");
}

/// The server named by `TASKMINT_TEST_POSTGRES_URL`, if any.
pub fn server_from_env() -> Option<String> {
    std::env::var("TASKMINT_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A new, empty database on `server` (a URL to a database its user may
/// create databases from); its URL.
pub async fn fresh_database(server: &str) -> String {
    let name = format!("t_{:016x}", rand::random::<u64>());
    let mut admin = sqlx::PgConnection::connect(server).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    with_database(server, &name)
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    if query.is_empty() {
        format!("{base}/{db}")
    } else {
        format!("{base}/{db}?{query}")
    }
}

/// A cluster this test process started.
#[derive(Debug)]
pub struct Cluster {
    pg_ctl: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    /// Starts a cluster, or `None` when `initdb` is not installed.
    #[allow(
        clippy::zombie_processes,
        reason = "the watcher must outlive this process, so it is never waited for"
    )]
    pub fn start() -> Option<Self> {
        let bin = pg_bin_dir()?;
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let dir = std::env::temp_dir().join(format!(
            "taskmint-pg-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres {
            let mut chown = Command::new("chown");
            chown.arg("postgres").arg(&dir);
            run(chown, "chown");
        }
        let mut initdb = pg_command(as_postgres, &bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .args(["--locale", "C"]);
        run(initdb, "initdb");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self {
            pg_ctl: bin.join("pg_ctl"),
            dir,
            port,
            as_postgres,
        };
        cluster.start_again();
        // The watcher: polls for this process and stops the cluster after it.
        let stop = format!(
            "{} -D '{}' stop -m immediate",
            cluster.pg_ctl.display(),
            cluster.dir.join("data").display()
        );
        let stop = if as_postgres {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; {stop}; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = cluster.dir.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the cluster's watcher");
        Some(cluster)
    }

    /// The URL of its maintenance database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: sessions are ended).
    pub fn stop(&self) {
        let mut stop = pg_command(self.as_postgres, &self.pg_ctl);
        stop.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-m", "fast", "stop"]);
        run(stop, "pg_ctl stop");
    }

    /// Starts the server (again), on the same port and data.
    pub fn start_again(&self) {
        let mut start = pg_command(self.as_postgres, &self.pg_ctl);
        start
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=300 -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .arg("start");
        run(start, "pg_ctl start");
    }
}

/// Where `initdb` and `pg_ctl` are: on `PATH`, or where Debian and a source
/// build put them.
fn pg_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/local/bin".into());
    dirs.push("/usr/local/pgsql/bin".into());
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

/// Runs a PostgreSQL tool, as the `postgres` user when this process is
/// root.
fn pg_command(as_postgres: bool, program: &Path) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
