//! The issuer under test as a child process, and what `/proc` says about
//! it: CPU time (user + system, all threads) and resident memory. Reading
//! the server's own counters is what makes "server CPU per credential"
//! comparable across machines where the client shares the cores.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `taskmint serve` child, killed on drop.
#[derive(Debug)]
pub struct ServerProc {
    child: Child,
    /// Where it listens.
    pub addr: String,
    /// How long from spawn to the first answered request.
    pub first_request: Duration,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on Linux).
fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) used so far by process `pid`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clk_tck())
}

/// A `VmRSS`/`VmHWM`-style line of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl ServerProc {
    /// Starts `exe serve --config config --listen addr` and waits until
    /// `probe` succeeds (the first served request), at most 30 s.
    pub async fn start<F, Fut>(
        exe: &Path,
        config: &Path,
        addr: &str,
        mut probe: F,
    ) -> anyhow::Result<Self>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        let child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", addr])
            .env(
                "RUST_LOG",
                std::env::var("TASKMINT_BENCH_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start `{}`: {e}", exe.display()))?;
        let mut p = Self {
            child,
            addr: addr.to_owned(),
            first_request: Duration::ZERO,
        };
        loop {
            if probe().await {
                p.first_request = started.elapsed();
                return Ok(p);
            }
            if let Some(status) = p.child.try_wait()? {
                anyhow::bail!("the issuer exited during start: {status}");
            }
            if started.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("the issuer did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The child, to read its counters.
    pub fn proc(&self) -> Proc {
        Proc(self.child.id())
    }
}

/// A process whose counters are read from `/proc` (the child issuer, or an
/// issuer started elsewhere whose pid was given).
#[derive(Debug, Clone, Copy)]
pub struct Proc(pub u32);

impl Proc {
    /// CPU seconds used so far.
    pub fn cpu(&self) -> f64 {
        cpu_seconds(self.0).unwrap_or(f64::NAN)
    }

    /// Resident set, MiB.
    pub fn rss_mib(&self) -> f64 {
        status_kib(self.0, "VmRSS:")
            .map(|k| k as f64 / 1024.0)
            .unwrap_or(f64::NAN)
    }

    /// Peak resident set, MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        status_kib(self.0, "VmHWM:")
            .map(|k| k as f64 / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

/// A free loopback port.
pub fn free_addr() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}
