//! What several issuer processes on one PostgreSQL database need from it
//! besides the tables: a wake-up when another process committed a
//! revocation, and one leader for the background duties.
//!
//! - Wake-ups: a revocation's transaction runs `pg_notify` on
//!   [`CHANNEL`], delivered to every listener when (and only if) it
//!   commits. A notification carries no data and may be lost while a
//!   listener reconnects, so it is a hint only: the reader reads the log
//!   table after every wake-up and after every reconnect.
//! - Leadership: a session-level advisory lock ([`LEADER_KEY`]) held on a
//!   connection of its own. PostgreSQL releases it when that session ends,
//!   which it notices at once when the process dies (the kernel closes the
//!   socket) and within the keepalive time when the network is cut. The
//!   leader pings its session before each round of duties and steps down
//!   when the ping fails; the duties themselves are idempotent in the
//!   database, so a round run by a leader that has just lost its session
//!   does no harm.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use super::{Pg, store_error};
use crate::store::StoreError;

/// The notification channel of committed revocations.
pub(super) const CHANNEL: &str = "taskmint_revocations";

/// The advisory lock key of the leader ("taskmint" in ASCII, folded into
/// an `i64`).
pub(super) const LEADER_KEY: i64 = 0x7461_736b_6d69_6e74;

/// How long a ping of the leader's session may take before the leader
/// steps down.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Wake-ups for the readers of the revocation log.
pub struct CommitListener {
    opts: PgConnectOptions,
    connect_timeout: Duration,
    listener: Option<PgListener>,
}

impl std::fmt::Debug for CommitListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitListener")
            .field("connected", &self.listener.is_some())
            .finish_non_exhaustive()
    }
}

impl CommitListener {
    pub(super) fn new(opts: PgConnectOptions, connect_timeout: Duration) -> Self {
        Self {
            opts,
            connect_timeout,
            listener: None,
        }
    }

    /// Waits for a notification or a reconnect (either means: read the
    /// log). An error means the listener is down; the caller reads the log
    /// on its own schedule and calls again, which reconnects.
    pub async fn next(&mut self) -> Result<(), StoreError> {
        let Some(listener) = self.listener.as_mut() else {
            // The pool only reconnects the listener's one connection.
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(self.connect_timeout)
                .max_lifetime(None)
                .idle_timeout(None)
                .connect_lazy_with(self.opts.clone());
            let mut listener = PgListener::connect_with(&pool).await.pg()?;
            // A pool closed elsewhere must not end the wait: this pool is
            // the listener's own.
            listener.ignore_pool_close_event(true);
            listener.listen(CHANNEL).await.pg()?;
            self.listener = Some(listener);
            // Connected (again): whatever was committed meanwhile was not
            // notified to us.
            return Ok(());
        };
        match listener.try_recv().await {
            // A notification, or `None`: the connection was lost and has
            // been re-established, and notifications in between are lost.
            Ok(_) => Ok(()),
            Err(e) => {
                self.listener = None;
                Err(store_error(e))
            }
        }
    }
}

/// This process's claim on the leader's advisory lock, on a session of its
/// own that it keeps whether it leads or waits to.
pub struct Leader {
    opts: PgConnectOptions,
    connect_timeout: Duration,
    session: Option<PgConnection>,
    leading: bool,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("leading", &self.leading)
            .finish_non_exhaustive()
    }
}

impl Leader {
    pub(super) fn new(opts: PgConnectOptions, connect_timeout: Duration) -> Self {
        Self {
            opts,
            connect_timeout,
            session: None,
            leading: false,
        }
    }

    /// Whether this process leads now: confirms the session that holds the
    /// lock, or tries to take the lock. Every step is bounded: a database
    /// that stops answering makes this process step down, never hang.
    pub async fn hold(&mut self) -> Result<bool, StoreError> {
        match tokio::time::timeout(PING_TIMEOUT + self.connect_timeout, self.try_hold()).await {
            Ok(Ok(leading)) => {
                self.leading = leading;
                Ok(leading)
            }
            Ok(Err(e)) => {
                self.step_down();
                Err(e)
            }
            Err(_) => {
                self.step_down();
                Err(StoreError::Unavailable {
                    condition: crate::store::Condition::Unreachable,
                    detail: "the leader's database session stopped answering".into(),
                })
            }
        }
    }

    /// Drops the session, and with it the lock if it was held.
    fn step_down(&mut self) {
        self.session = None;
        self.leading = false;
    }

    async fn try_hold(&mut self) -> Result<bool, StoreError> {
        let session = match self.session.as_mut() {
            Some(s) => s,
            None => self.session.insert(self.connect().await?),
        };
        if self.leading {
            session.ping().await.pg()?;
            return Ok(true);
        }
        let took: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_KEY)
            .fetch_one(&mut *session)
            .await
            .pg()?;
        Ok(took)
    }

    async fn connect(&self) -> Result<PgConnection, StoreError> {
        let mut session = PgConnection::connect_with(&self.opts).await.pg()?;
        // A leader cut off by the network must lose the lock in seconds,
        // not after the kernel's default two hours of keepalive.
        sqlx::query(
            "SELECT set_config('tcp_keepalives_idle', '5', false), \
                    set_config('tcp_keepalives_interval', '2', false), \
                    set_config('tcp_keepalives_count', '3', false)",
        )
        .execute(&mut session)
        .await
        .pg()?;
        Ok(session)
    }

    /// Gives the lock up (at shutdown), so another process takes over at
    /// once rather than when this session times out.
    pub async fn release(&mut self) {
        self.leading = false;
        if let Some(session) = self.session.take() {
            let _ = tokio::time::timeout(PING_TIMEOUT, session.close()).await;
        }
    }
}
