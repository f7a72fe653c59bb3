//! The spool: a local SQLite database (WAL, `synchronous=FULL`) holding, per connector, the
//! chain position and cursor, the batches not yet delivered (and delivered ones for the
//! retention period), the row hashes used to suppress unchanged rows and find deletes, and
//! the rejected rows with their reasons.
//!
//! [`Spool::commit`] writes a batch, the advanced cursor, the row hashes and the rejects in
//! ONE transaction: a crash at any instant either keeps all of it or none of it, so nothing
//! is lost and nothing is read twice. Sequence numbers are assigned from the stored chain,
//! so they are never reused.

mod rejects;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions as _, Row as _};

use crate::config::Compression;
use crate::envelope::{BatchMeta, BuiltBatch, Chain};
use crate::mapping::Rejected;
use crate::source::cursor::CursorState;
pub use rejects::{RejectFilter, StoredReject};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Sqlite { path: PathBuf, source: sqlx::Error },
    #[error("spool {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("spool {path} is in use by another fepd process (lock {lock}); stop it first")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("spool {path}: cannot create state directory: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SpoolError {
    /// A busy or full disk may clear; a corrupt spool will not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SpoolError::Sqlite {
                source: sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut,
                ..
            }
        )
    }
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS connector_state (
    connector   TEXT PRIMARY KEY,
    next_seq    INTEGER NOT NULL,
    head_hash   TEXT NOT NULL,
    cursor      TEXT,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    connector    TEXT NOT NULL,
    first_seq    INTEGER NOT NULL,
    agent        TEXT NOT NULL,
    last_seq     INTEGER NOT NULL,
    record_type  TEXT NOT NULL,
    count        INTEGER NOT NULL,
    prev_hash    TEXT NOT NULL,
    head_hash    TEXT NOT NULL,
    signature    TEXT NOT NULL,
    compression  TEXT NOT NULL,
    region6      TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    body         BLOB NOT NULL,
    delivered_at TEXT,
    PRIMARY KEY (connector, first_seq)
);
CREATE INDEX IF NOT EXISTS batches_pending ON batches (connector, first_seq) WHERE delivered_at IS NULL;
CREATE TABLE IF NOT EXISTS row_hashes (
    connector  TEXT NOT NULL,
    source_key TEXT NOT NULL,
    hash       TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (connector, source_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejects (
    id          INTEGER PRIMARY KEY,
    connector   TEXT NOT NULL,
    source_key  TEXT NOT NULL,
    raw_hash    TEXT NOT NULL,
    raw         TEXT NOT NULL,
    reasons     TEXT NOT NULL,
    first_seen  TEXT NOT NULL,
    last_seen   TEXT NOT NULL,
    occurrences INTEGER NOT NULL DEFAULT 1,
    UNIQUE (connector, source_key, raw_hash)
);
-- Small agent-wide facts: the reject-report watermark, the spool-full alarm.
CREATE TABLE IF NOT EXISTS agent_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
PRAGMA user_version = 1;
"#;

/// The spool database.
#[derive(Clone)]
pub struct Spool {
    pool: SqlitePool,
    path: PathBuf,
    // Held for the life of a writing spool: one writing process per state directory.
    _lock: Option<std::sync::Arc<std::fs::File>>,
}

/// A connector's stored position.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorState {
    pub chain: Chain,
    pub cursor: Option<CursorState>,
}

/// Everything one commit writes atomically.
#[derive(Default)]
pub struct CommitUnit {
    pub batch: Option<BuiltBatch>,
    /// New or changed row hashes `(source_key, hex hash)`.
    pub row_hashes: Vec<(String, String)>,
    /// Snapshot: keys seen unchanged (or rejected) in this scan generation.
    pub seen_keys: Vec<String>,
    /// Snapshot: keys delivered as deletes.
    pub deleted_keys: Vec<String>,
    pub generation: i64,
    pub rejects: Vec<Rejected>,
    /// The cursor after this unit; `None` keeps the stored one.
    pub cursor: Option<CursorState>,
}

/// A spooled batch ready for a sink.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub meta: BatchMeta,
    pub body: Vec<u8>,
}

/// Spool figures for `status` and summaries.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SpoolStats {
    pub pending_batches: i64,
    pub pending_records: i64,
    /// Bytes of undelivered batch bodies.
    pub pending_bytes: i64,
    /// When the oldest undelivered batch was spooled (delivery lag).
    pub oldest_pending_at: Option<String>,
    pub delivered_batches: i64,
    pub rejects: i64,
    /// Bytes of batch bodies held, delivered or not (what `spool.max_bytes` limits).
    pub batch_bytes: i64,
    /// Bytes the spool database uses (its pages minus free pages).
    pub used_bytes: i64,
    /// Since when the spool has been full and extraction paused (the alarm), if it is.
    pub full_since: Option<String>,
}

/// Undelivered batches of one connector.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConnectorBacklog {
    pub connector: String,
    pub batches: i64,
    pub records: i64,
    pub oldest_pending_at: Option<String>,
}

/// Key of the spool-full alarm in `agent_state`.
pub const SPOOL_FULL_SINCE: &str = "spool_full_since";
/// Key of the reject-report watermark (highest reject id reported) in `agent_state`.
pub const REJECTS_REPORTED: &str = "rejects_reported";
/// Key of the reject report being sent (its last id) in `agent_state`: a report that may
/// have reached the broker is re-sent with the same content and message id.
pub const REJECTS_SENDING: &str = "rejects_sending";

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Spool {
    /// Opens (creating if needed) the spool in `state_dir` and takes the state directory's
    /// lock.
    pub async fn open(state_dir: &Path) -> Result<Spool, SpoolError> {
        let path = state_dir.join("spool.db");
        std::fs::create_dir_all(state_dir).map_err(|source| SpoolError::Io {
            path: path.clone(),
            source,
        })?;
        let lock_path = state_dir.join("fepd.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| SpoolError::Io {
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        let rc = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if rc != 0 {
            return Err(SpoolError::Locked {
                path,
                lock: lock_path,
            });
        }
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Batch bodies are blobs of hundreds of KiB: large pages store them in few
            // overflow pages (takes effect when the spool is created).
            .page_size(65536)
            .busy_timeout(Duration::from_secs(60))
            .disable_statement_logging();
        let pool = SqlitePoolOptions::new()
            .max_connections(3)
            .connect_with(options)
            .await
            .map_err(|source| SpoolError::Sqlite {
                path: path.clone(),
                source,
            })?;
        let spool = Spool {
            pool,
            path,
            _lock: Some(std::sync::Arc::new(lock)),
        };
        sqlx::raw_sql(SCHEMA)
            .execute(&spool.pool)
            .await
            .map_err(|e| spool.err(e))?;
        Ok(spool)
    }

    /// Opens an existing spool for a short write while the agent may be running (it holds
    /// the lock): `fepd spool replay`. SQLite's own locking keeps the write safe.
    pub async fn open_beside_agent(state_dir: &Path) -> Result<Spool, SpoolError> {
        Spool::open_existing(
            state_dir,
            SqliteConnectOptions::new()
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(60)),
        )
        .await
    }

    /// Opens an existing spool read-only, without the lock: for `status` and `rejects`
    /// while the agent runs.
    pub async fn open_reader(state_dir: &Path) -> Result<Spool, SpoolError> {
        Spool::open_existing(
            state_dir,
            SqliteConnectOptions::new()
                .read_only(true)
                .busy_timeout(Duration::from_secs(10)),
        )
        .await
    }

    /// Opens an existing spool on one connection without taking the lock.
    async fn open_existing(
        state_dir: &Path,
        options: SqliteConnectOptions,
    ) -> Result<Spool, SpoolError> {
        let path = state_dir.join("spool.db");
        if !path.is_file() {
            return Err(SpoolError::Corrupt {
                path,
                message: "no spool yet: run `fepd run --once` (or start the service) first".into(),
            });
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.filename(&path).disable_statement_logging())
            .await
            .map_err(|source| SpoolError::Sqlite {
                path: path.clone(),
                source,
            })?;
        Ok(Spool {
            pool,
            path,
            _lock: None,
        })
    }

    /// Every connector's stored position: `(connector, last seq, cursor, updated_at)`.
    pub async fn connector_states(
        &self,
    ) -> Result<Vec<(String, i64, Option<CursorState>, String)>, SpoolError> {
        let rows = sqlx::query("SELECT connector, next_seq - 1, cursor, updated_at FROM connector_state ORDER BY connector")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let cursor: Option<String> = r.get(2);
                (
                    r.get(0),
                    r.get(1),
                    cursor.and_then(|c| serde_json::from_str(&c).ok()),
                    r.get(3),
                )
            })
            .collect())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: sqlx::Error) -> SpoolError {
        SpoolError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, message: impl Into<String>) -> SpoolError {
        SpoolError::Corrupt {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// The stored chain and cursor of a connector (genesis when new).
    pub async fn state(&self, connector: &str) -> Result<ConnectorState, SpoolError> {
        let row = sqlx::query(
            "SELECT next_seq, head_hash, cursor FROM connector_state WHERE connector = ?1",
        )
        .bind(connector)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        let Some(row) = row else {
            return Ok(ConnectorState {
                chain: Chain::GENESIS,
                cursor: None,
            });
        };
        let head_hex: String = row.get(1);
        let head: [u8; 32] = hex::decode(&head_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                self.corrupt(format!(
                    "connector {connector}: head hash `{head_hex}` is not 32 bytes of hex"
                ))
            })?;
        let cursor: Option<String> = row.get(2);
        let cursor = match cursor {
            None => None,
            Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                self.corrupt(format!(
                    "connector {connector}: stored cursor unreadable: {e}"
                ))
            })?),
        };
        Ok(ConnectorState {
            chain: Chain {
                next_seq: row.get(0),
                head,
            },
            cursor,
        })
    }

    /// The stored content hashes of these keys.
    pub async fn row_hashes(
        &self,
        connector: &str,
        keys: &[&str],
    ) -> Result<HashMap<String, String>, SpoolError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let keys_json = serde_json::to_string(keys).map_err(|e| self.corrupt(e.to_string()))?;
        let rows = sqlx::query(
            "SELECT source_key, hash FROM row_hashes WHERE connector = ?1 AND source_key IN (SELECT value FROM json_each(?2))",
        )
        .bind(connector)
        .bind(keys_json)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Snapshot: up to `limit` keys that a completed scan of `generation` did not see.
    pub async fn unseen_keys(
        &self,
        connector: &str,
        generation: i64,
        limit: i64,
    ) -> Result<Vec<String>, SpoolError> {
        let rows = sqlx::query(
            "SELECT source_key FROM row_hashes WHERE connector = ?1 AND generation < ?2 ORDER BY source_key LIMIT ?3",
        )
        .bind(connector)
        .bind(generation)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Writes one unit atomically (see the module doc).
    pub async fn commit(
        &self,
        connector: &str,
        unit: &CommitUnit,
        chain_after: Chain,
    ) -> Result<(), SpoolError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.err(e))?;
        let now = now_rfc3339();
        if let Some(b) = &unit.batch {
            let m = &b.meta;
            sqlx::query(
                "INSERT INTO batches (connector, first_seq, last_seq, record_type, count, prev_hash, head_hash, signature, compression, region6, created_at, body, agent) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .bind(connector)
            .bind(m.first_seq)
            .bind(m.last_seq)
            .bind(&m.record_type)
            .bind(m.count)
            .bind(&m.prev_hash)
            .bind(&m.head_hash)
            .bind(&m.signature)
            .bind(match m.compression {
                Compression::Gzip => "gzip",
                Compression::None => "none",
            })
            .bind(&m.region6)
            .bind(&m.created_at)
            .bind(&b.body)
            .bind(&m.agent)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        }
        if !unit.row_hashes.is_empty() {
            let json =
                serde_json::to_string(&unit.row_hashes).map_err(|e| self.corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO row_hashes (connector, source_key, hash, generation) \
                 SELECT ?1, json_extract(value, '$[0]'), json_extract(value, '$[1]'), ?2 FROM json_each(?3) WHERE true \
                 ON CONFLICT (connector, source_key) DO UPDATE SET hash = excluded.hash, generation = excluded.generation",
            )
            .bind(connector)
            .bind(unit.generation)
            .bind(json)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        }
        if !unit.seen_keys.is_empty() {
            let json =
                serde_json::to_string(&unit.seen_keys).map_err(|e| self.corrupt(e.to_string()))?;
            sqlx::query(
                "UPDATE row_hashes SET generation = ?2 WHERE connector = ?1 AND source_key IN (SELECT value FROM json_each(?3))",
            )
            .bind(connector)
            .bind(unit.generation)
            .bind(json)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        }
        if !unit.deleted_keys.is_empty() {
            let json = serde_json::to_string(&unit.deleted_keys)
                .map_err(|e| self.corrupt(e.to_string()))?;
            sqlx::query("DELETE FROM row_hashes WHERE connector = ?1 AND source_key IN (SELECT value FROM json_each(?2))")
                .bind(connector)
                .bind(json)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        }
        for r in &unit.rejects {
            rejects::insert(&mut tx, connector, r, &now)
                .await
                .map_err(|e| self.err(e))?;
        }
        let cursor = match &unit.cursor {
            Some(c) => Some(serde_json::to_string(c).map_err(|e| self.corrupt(e.to_string()))?),
            None => None,
        };
        sqlx::query(
            "INSERT INTO connector_state (connector, next_seq, head_hash, cursor, updated_at) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (connector) DO UPDATE SET next_seq = excluded.next_seq, head_hash = excluded.head_hash, \
             cursor = COALESCE(excluded.cursor, connector_state.cursor), updated_at = excluded.updated_at",
        )
        .bind(connector)
        .bind(chain_after.next_seq)
        .bind(hex::encode(chain_after.head))
        .bind(cursor)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Undelivered batches after `(connector, first_seq)` in (connector, sequence) order,
    /// at most `limit`.
    pub async fn pending_after(
        &self,
        after: Option<&(String, i64)>,
        limit: i64,
    ) -> Result<Vec<StoredBatch>, SpoolError> {
        let (connector, seq) = match after {
            Some((c, s)) => (c.as_str(), *s),
            None => ("", i64::MIN),
        };
        let rows = sqlx::query(
            "SELECT connector, first_seq, last_seq, record_type, count, prev_hash, head_hash, signature, compression, region6, created_at, body, agent \
             FROM batches WHERE delivered_at IS NULL AND (connector, first_seq) > (?1, ?2) ORDER BY connector, first_seq LIMIT ?3",
        )
        .bind(connector)
        .bind(seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .map(|r| StoredBatch {
                meta: BatchMeta {
                    agent: r.get(12),
                    connector: r.get(0),
                    first_seq: r.get(1),
                    last_seq: r.get(2),
                    record_type: r.get(3),
                    count: r.get(4),
                    prev_hash: r.get(5),
                    head_hash: r.get(6),
                    signature: r.get(7),
                    compression: if r.get::<String, _>(8) == "gzip" {
                        Compression::Gzip
                    } else {
                        Compression::None
                    },
                    region6: r.get(9),
                    created_at: r.get(10),
                },
                body: r.get(11),
            })
            .collect())
    }

    /// Marks batches `(connector, first_seq)` delivered (after the sink confirmed them), in
    /// one transaction.
    pub async fn mark_delivered(&self, batches: &[(&str, i64)]) -> Result<(), SpoolError> {
        if batches.is_empty() {
            return Ok(());
        }
        let json = serde_json::to_string(batches).map_err(|e| self.corrupt(e.to_string()))?;
        sqlx::query(
            "UPDATE batches SET delivered_at = ?2 WHERE delivered_at IS NULL AND (connector, first_seq) IN \
             (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?1))",
        )
        .bind(json)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Drops delivered batches older than `retention`. Undelivered batches are never
    /// dropped.
    pub async fn prune(&self, retention: Duration) -> Result<u64, SpoolError> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(7));
        let done =
            sqlx::query("DELETE FROM batches WHERE delivered_at IS NOT NULL AND delivered_at < ?1")
                .bind(cutoff.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .execute(&self.pool)
                .await
                .map_err(|e| self.err(e))?;
        Ok(done.rows_affected())
    }

    pub async fn stats(&self) -> Result<SpoolStats, SpoolError> {
        let row = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM batches WHERE delivered_at IS NULL), \
               (SELECT COALESCE(SUM(count), 0) FROM batches WHERE delivered_at IS NULL), \
               (SELECT COALESCE(SUM(length(body)), 0) FROM batches WHERE delivered_at IS NULL), \
               (SELECT MIN(created_at) FROM batches WHERE delivered_at IS NULL), \
               (SELECT COUNT(*) FROM batches WHERE delivered_at IS NOT NULL), \
               (SELECT COUNT(*) FROM rejects), \
               (SELECT value FROM agent_state WHERE key = ?1)",
        )
        .bind(SPOOL_FULL_SINCE)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(SpoolStats {
            pending_batches: row.get(0),
            pending_records: row.get(1),
            pending_bytes: row.get(2),
            oldest_pending_at: row.get(3),
            delivered_batches: row.get(4),
            rejects: row.get(5),
            batch_bytes: self.batch_bytes().await?,
            used_bytes: self.used_bytes().await?,
            full_since: row.get(6),
        })
    }

    /// Undelivered batches per connector.
    pub async fn backlog(&self) -> Result<Vec<ConnectorBacklog>, SpoolError> {
        let rows = sqlx::query(
            "SELECT connector, COUNT(*), COALESCE(SUM(count), 0), MIN(created_at) FROM batches \
             WHERE delivered_at IS NULL GROUP BY connector ORDER BY connector",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .map(|r| ConnectorBacklog {
                connector: r.get(0),
                batches: r.get(1),
                records: r.get(2),
                oldest_pending_at: r.get(3),
            })
            .collect())
    }

    /// Bytes the database uses: its pages minus the free ones (deleting rows frees pages
    /// for reuse without shrinking the file).
    pub async fn used_bytes(&self) -> Result<i64, SpoolError> {
        let row = sqlx::query(
            "SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count()), \
                    (SELECT page_size FROM pragma_page_size())",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(row.get::<i64, _>(0) * row.get::<i64, _>(1))
    }

    /// Bytes of batch bodies held, delivered (retained for replay) or not: what the spool
    /// cap limits.
    pub async fn batch_bytes(&self) -> Result<i64, SpoolError> {
        let row = sqlx::query("SELECT COALESCE(SUM(length(body)), 0) FROM batches")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// Drops delivered batches, oldest delivery first, until the batches take at most
    /// `max_bytes` or none delivered is left; returns how many were dropped. Used when the
    /// spool is full: retention gives way before extraction stops. Undelivered batches are
    /// never dropped.
    pub async fn prune_for_space(&self, max_bytes: i64) -> Result<u64, SpoolError> {
        let mut dropped = 0;
        while self.batch_bytes().await? > max_bytes {
            let done = sqlx::query(
                "DELETE FROM batches WHERE rowid IN (SELECT rowid FROM batches WHERE delivered_at IS NOT NULL \
                 ORDER BY delivered_at LIMIT 64)",
            )
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
            if done.rows_affected() == 0 {
                break;
            }
            dropped += done.rows_affected();
        }
        Ok(dropped)
    }

    /// Marks the delivered batches of `connector` from the one holding `from_seq` on as
    /// undelivered, so the next delivery re-sends them (same message ids and seqs).
    /// Returns `(batches, records)` marked; batches already pruned cannot be replayed.
    pub async fn replay(&self, connector: &str, from_seq: i64) -> Result<(i64, i64), SpoolError> {
        let row = sqlx::query(
            "UPDATE batches SET delivered_at = NULL WHERE connector = ?1 AND last_seq >= ?2 AND delivered_at IS NOT NULL \
             RETURNING count",
        )
        .bind(connector)
        .bind(from_seq)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok((
            row.len() as i64,
            row.iter().map(|r| r.get::<i64, _>(0)).sum(),
        ))
    }

    /// The lowest seq still held for `connector` (delivered or not), if any.
    pub async fn first_retained_seq(&self, connector: &str) -> Result<Option<i64>, SpoolError> {
        let row = sqlx::query("SELECT MIN(first_seq) FROM batches WHERE connector = ?1")
            .bind(connector)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// A value of `agent_state`.
    pub async fn agent_state(&self, key: &str) -> Result<Option<String>, SpoolError> {
        let row = sqlx::query("SELECT value FROM agent_state WHERE key = ?1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Sets (or with `None` removes) a value of `agent_state`.
    pub async fn set_agent_state(&self, key: &str, value: Option<&str>) -> Result<(), SpoolError> {
        let q = match value {
            Some(v) => sqlx::query(
                "INSERT INTO agent_state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(v),
            None => sqlx::query("DELETE FROM agent_state WHERE key = ?1").bind(key),
        };
        q.execute(&self.pool).await.map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The pool, for the reject queries in the submodule.
    fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}
