//! What the issuer processes sharing a store need from it, whatever the
//! backend: wake-ups when another process may have committed a revocation
//! ([`CommitWakes`]), one leader for the background duties
//! ([`Leadership`]), and for SQLite, which serves one process, the lock
//! that refuses a second ([`ProcessLock`]).

use std::fs::File;
use std::path::{Path, PathBuf};

use super::StoreError;
use super::postgres::{CommitListener, Leader};

/// Wake-ups for the readers of the revocation log.
#[derive(Debug)]
pub enum CommitWakes {
    /// One process writes (SQLite): it wakes its readers itself.
    Local,
    /// Other processes write too: PostgreSQL notifications.
    Postgres(Box<CommitListener>),
}

impl CommitWakes {
    /// Waits until another process may have committed a revocation, or the
    /// listener reconnected (either means: read the log). Never resolves
    /// for [`CommitWakes::Local`]. An error means the listener is down: the
    /// caller reads the log on its own schedule and calls again.
    pub async fn next(&mut self) -> Result<(), StoreError> {
        match self {
            Self::Local => std::future::pending().await,
            Self::Postgres(l) => l.next().await,
        }
    }
}

/// This process's claim on leading the background duties (the deadline
/// reaper, overdue delivery, log pruning, sealing the audit trail).
#[derive(Debug)]
pub enum Leadership {
    /// The only process on its store (SQLite): always the leader.
    Sole,
    /// One of several on PostgreSQL: leads while it holds the advisory lock.
    Postgres(Box<Leader>),
}

impl Leadership {
    /// Whether this process leads now (taking the lead if it is free). An
    /// error means it cannot tell, and so does not lead.
    pub async fn hold(&mut self) -> Result<bool, StoreError> {
        match self {
            Self::Sole => Ok(true),
            Self::Postgres(l) => l.hold().await,
        }
    }

    /// Gives the lead up, so another process takes over at once.
    pub async fn release(&mut self) {
        if let Self::Postgres(l) = self {
            l.release().await;
        }
    }
}

/// An exclusive lock on `<database>.lock`, held for as long as an issuer
/// uses a SQLite store: a second issuer on the same file would keep its
/// own revocation feed and its own reaper, so it is refused at start.
#[derive(Debug)]
pub struct ProcessLock {
    _file: File,
}

impl ProcessLock {
    /// Takes the lock of the database at `db`, or says who holds it.
    pub fn take(db: &Path) -> Result<Self, StoreError> {
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let open_err = |reason: String| StoreError::Open {
            path: db.display().to_string(),
            reason,
        };
        if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| open_err(format!("cannot open `{}`: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let by = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                return Err(open_err(format!(
                    "it is in use by another taskmint process{by}: a SQLite store serves one \
                     issuer; to run several replicas, point them all at one PostgreSQL \
                     database (`[store] url`)"
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(open_err(format!("cannot lock `{}`: {e}", path.display())));
            }
        }
        // Who holds it, for the message a second process shows.
        let _ = file.set_len(0);
        let _ = std::io::Write::write_all(&mut &file, std::process::id().to_string().as_bytes());
        Ok(Self { _file: file })
    }
}
