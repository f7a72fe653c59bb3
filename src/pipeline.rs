//! One pass of a connector — source → mapper → spool — and the delivery that runs beside
//! it (spool → sink).
//!
//! The reader (this task) streams rows, maps and validates them, and hands chunks of at
//! most `batch_size` rows through a bounded channel to the writer task, which suppresses
//! unchanged rows by their stored hashes, builds and signs the batch, and commits it with
//! the advanced cursor in one spool transaction. A third task delivers committed batches
//! to the sink as they appear. Each stage holds at most a couple of chunks, so memory does
//! not depend on the table size.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Utc};
use ed25519_dalek::SigningKey;
use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc, watch};

use crate::config::{AgentConfig, ConnectorConfig, CursorMode};
use crate::envelope::{BatchBuilder, Chain, LineInput};
use crate::keys::{KeyError, load_signing_key};
use crate::mapping::{Mapped, Mapper, Rejected};
use crate::schema::rules::RuleContext;
use crate::sink::{self, Delivered, Sink, SinkError};
use crate::source::cursor::{
    CursorState, CursorValue, Layout, SnapshotPhase, Start, build_query, start_of_pass,
};
use crate::source::{self, Row, SourceError};
use crate::spool::{CommitUnit, Spool, SpoolError};

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("connector {connector}: cannot build batch: {source}")]
    Build {
        connector: String,
        source: std::io::Error,
    },
    #[error("connector {0}: the writer task stopped unexpectedly")]
    WriterGone(String),
}

impl PassError {
    pub fn is_retryable(&self) -> bool {
        match self {
            PassError::Source(e) => e.is_retryable(),
            PassError::Spool(e) => e.is_retryable(),
            PassError::Sink(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// The running agent: config, spool, sink and signing key.
pub struct Agent {
    pub config: AgentConfig,
    pub spool: Spool,
    pub sink: Arc<dyn Sink>,
    pub key: SigningKey,
    pub stop: Arc<Stop>,
    /// Set when the current run's delivery task has ended (done or failed).
    pub delivery_ended: Arc<std::sync::atomic::AtomicBool>,
    /// Set by a commit that found the spool full: the pass ends at its next chunk and
    /// waits for room before going on.
    pub spool_full: Arc<std::sync::atomic::AtomicBool>,
}

/// A graceful-stop request: passes stop reading at the next chunk, commit what they have
/// read, deliver what is spooled and return.
#[derive(Default)]
pub struct Stop {
    requested: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl Stop {
    pub fn request(&self) {
        self.requested
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until a stop is requested.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_requested() {
                return;
            }
            notified.await;
        }
    }
}

impl Agent {
    pub async fn open(config: AgentConfig) -> Result<Agent, PassError> {
        let key = load_signing_key(&config.signing_key)?;
        let spool = Spool::open(&config.state_dir).await?;
        let sink = sink::build(&config)?;
        Ok(Agent {
            config,
            spool,
            sink,
            key,
            stop: Arc::new(Stop::default()),
            delivery_ended: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            spool_full: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    fn rule_context(&self, c: &ConnectorConfig) -> RuleContext {
        RuleContext {
            today: Utc::now()
                .with_timezone(&self.config.time_zone)
                .date_naive(),
            agent_region: Some(self.config.region_code.clone()),
            time_zone: c.extract.time_zone,
        }
    }
}

/// What one pass of one connector did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PassStats {
    pub connector: String,
    pub rows_read: u64,
    /// Records (upserts and deletes) committed to the spool.
    pub records: u64,
    pub deletes: u64,
    /// Rows read again but unchanged (suppressed by their hash).
    pub unchanged: u64,
    pub rejects: u64,
    pub batches: u64,
    pub seconds: f64,
}

impl PassStats {
    /// Two parts of one pass (cut at a full spool), added up.
    fn plus(mut self, more: &PassStats) -> PassStats {
        self.rows_read += more.rows_read;
        self.records += more.records;
        self.deletes += more.deletes;
        self.unchanged += more.unchanged;
        self.rejects += more.rejects;
        self.batches += more.batches;
        self.seconds += more.seconds;
        self
    }
}

/// What `run_once` did.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub passes: Vec<PassStats>,
    /// Connectors whose pass failed, with the error. The others still ran.
    pub failures: Vec<(String, PassError)>,
    pub delivered: Delivered,
}

/// Runs one pass of every enabled connector (one at a time) while delivering what they
/// spool; returns when everything spooled has been delivered. A failing connector does not
/// stop the others; a failing sink stops the run (the spool keeps the batches).
pub async fn run_once(agent: &Agent) -> Result<RunSummary, PassError> {
    run_selected(agent, None, None).await
}

/// [`run_once`] for one connector (or all with `None`), reporting progress.
pub async fn run_selected(
    agent: &Agent,
    only: Option<&str>,
    progress: Progress<'_>,
) -> Result<RunSummary, PassError> {
    let notify = Arc::new(Notify::new());
    let (done_tx, done_rx) = watch::channel(false);
    agent
        .delivery_ended
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let delivery = {
        let (spool, sink, stop, ended) = (
            agent.spool.clone(),
            agent.sink.clone(),
            agent.stop.clone(),
            agent.delivery_ended.clone(),
        );
        let notify = notify.clone();
        tokio::spawn(async move {
            let result = deliver_until_done(spool, sink, notify, done_rx, stop).await;
            // A pass paused on a full spool must not wait for a delivery that has ended.
            ended.store(true, std::sync::atomic::Ordering::SeqCst);
            result
        })
    };
    let extraction = async {
        let mut summary = RunSummary::default();
        for c in agent
            .config
            .connectors
            .iter()
            .filter(|c| only.map_or(c.enabled, |name| c.name == name))
        {
            if agent.stop.is_requested() {
                break;
            }
            if !in_window(c) {
                tracing::info!(connector = %c.name, "outside its window; skipped");
                continue;
            }
            match run_pass_retrying(agent, c, &notify, progress).await {
                Ok(s) => summary.passes.push(s),
                Err(e) => {
                    tracing::error!(connector = %c.name, error = %e, retryable = e.is_retryable(), "pass failed");
                    summary.failures.push((c.name.clone(), e));
                }
            }
        }
        let _ = done_tx.send(true);
        summary
    };
    let (mut summary, delivered) = tokio::join!(extraction, delivery);
    summary.delivered = delivered.map_err(|e| SinkError::Io {
        sink: agent.sink.describe(),
        message: format!("delivery task failed: {e}"),
    })??;
    agent.spool.prune(agent.config.spool.retention).await?;
    crate::control::send_all(&agent.config, &agent.spool, agent.sink.as_ref()).await;
    Ok(summary)
}

/// Attempts of a pass that fails with a retryable error (database restarting, network
/// cut), with exponential backoff from 1 s to 30 s plus jitter: about three minutes.
const PASS_ATTEMPTS: u32 = 9;

/// Runs a pass, and after a retryable failure runs it again from the last committed cursor
/// (everything committed stays committed; nothing is read twice into the spool).
pub async fn run_pass_retrying(
    agent: &Agent,
    c: &ConnectorConfig,
    committed: &Arc<Notify>,
    progress: Progress<'_>,
) -> Result<PassStats, PassError> {
    let mut attempt = 1;
    let cap = SpoolCap::of(agent);
    // Passes cut short by a full spool, added up.
    let mut so_far: Option<PassStats> = None;
    loop {
        cap.wait_for_room(&agent.spool).await?;
        match run_pass_with_progress(agent, c, committed, progress).await {
            Ok(stats)
                if agent.spool_full.load(std::sync::atomic::Ordering::SeqCst)
                    && !agent.stop.is_requested() =>
            {
                // Ended at a chunk boundary because the spool filled up: wait for room,
                // then go on from the committed cursor.
                tracing::warn!(connector = %c.name, "spool full: pass paused at a chunk boundary");
                so_far = Some(match so_far {
                    Some(total) => total.plus(&stats),
                    None => stats,
                });
            }
            Ok(stats) => {
                return Ok(match so_far {
                    Some(total) => total.plus(&stats),
                    None => stats,
                });
            }
            Err(e) if e.is_retryable() && attempt < PASS_ATTEMPTS && !agent.stop.is_requested() => {
                let wait = crate::retry::backoff(attempt);
                tracing::warn!(connector = %c.name, error = %e, attempt, retry_in = ?wait, "pass failed; retrying from the last committed cursor");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = agent.stop.wait() => return Err(e),
                }
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Delivers while extraction runs, and what is left after it. A failed delivery is
/// retried with backoff and jitter (extraction goes on into the spool meanwhile); once
/// extraction has finished, retries stop after the sink's `retry_timeout` and the error is
/// returned — the batches stay spooled for the next run. A refusal that retrying cannot
/// cure (a certificate, a login) is returned at once.
async fn deliver_until_done(
    spool: Spool,
    sink: Arc<dyn Sink>,
    notify: Arc<Notify>,
    mut done: watch::Receiver<bool>,
    stop: Arc<Stop>,
) -> Result<Delivered, SinkError> {
    let mut total = Delivered::default();
    let mut attempt: u32 = 0;
    // When extraction had finished and delivery was still failing.
    let mut failing_since_done: Option<std::time::Instant> = None;
    loop {
        let finished = *done.borrow_and_update();
        match sink::deliver_pending_into(&spool, sink.as_ref(), &mut total).await {
            Ok(()) => {
                if attempt > 0 {
                    tracing::info!(sink = %sink.describe(), attempts = attempt, "delivery recovered");
                }
                attempt = 0;
                failing_since_done = None;
                if finished {
                    return Ok(total);
                }
            }
            Err(e) if !e.is_retryable() || stop.is_requested() => return Err(e),
            Err(e) => {
                attempt += 1;
                if finished {
                    let since = *failing_since_done.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= sink.retry_timeout() {
                        tracing::error!(sink = %sink.describe(), error = %e, attempts = attempt, "delivery keeps failing; giving up for this run (batches stay spooled)");
                        return Err(e);
                    }
                }
                let wait = crate::retry::backoff(attempt);
                tracing::warn!(sink = %sink.describe(), error = %e, attempt, retry_in = ?wait, "delivery failed; batches stay spooled and will be re-sent");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait() => return Err(e),
                }
                continue;
            }
        }
        tokio::select! {
            _ = notify.notified() => {}
            changed = done.changed() => {
                if changed.is_err() {
                    // Extraction ended without saying so (it failed): deliver what is
                    // spooled, then stop.
                    sink::deliver_pending_into(&spool, sink.as_ref(), &mut total).await?;
                    return Ok(total);
                }
            }
        }
    }
}

/// A chunk of mapped rows handed from the reader to the writer.
#[derive(Default)]
struct Chunk {
    mapped: Vec<Mapped>,
    /// Timestamp mode: each mapped row's timestamp, parallel to `mapped`.
    row_ts: Vec<Option<CursorValue>>,
    rejects: Vec<Rejected>,
    /// The cursor after the chunk's last row.
    cursor: Option<CursorState>,
}

/// Whether the connector may read now (its `window`, in the source's time zone).
pub fn in_window(c: &ConnectorConfig) -> bool {
    match &c.extract.window {
        None => true,
        Some(w) => w.contains(Utc::now().with_timezone(&c.extract.time_zone).time()),
    }
}

/// Runs one pass of one connector; `committed` is notified after each spool commit.
pub async fn run_pass(
    agent: &Agent,
    c: &ConnectorConfig,
    committed: &Arc<Notify>,
) -> Result<PassStats, PassError> {
    run_pass_with_progress(agent, c, committed, None).await
}

/// Called with the rows read so far, after each chunk.
pub type Progress<'a> = Option<&'a (dyn Fn(u64) + Send + Sync)>;

/// [`run_pass`] reporting progress (for `fepd backfill`).
pub async fn run_pass_with_progress(
    agent: &Agent,
    c: &ConnectorConfig,
    committed: &Arc<Notify>,
    progress: Progress<'_>,
) -> Result<PassStats, PassError> {
    let started = Instant::now();
    let state = agent.spool.state(&c.name).await?;
    let layout = Layout::for_connector(c);
    let mapper = Mapper::new(
        c,
        &layout,
        agent.config.hmac_key.clone(),
        agent.rule_context(c),
    );

    let (generation, scan) = match (&c.extract.mode, &state.cursor) {
        (
            CursorMode::Snapshot,
            Some(CursorState::Snapshot {
                generation, phase, ..
            }),
        ) => match phase {
            SnapshotPhase::Scan => (*generation, true),
            SnapshotPhase::Deletes => (*generation, false),
            SnapshotPhase::Done => (generation + 1, true),
        },
        (CursorMode::Snapshot, _) => (1, true),
        _ => (0, true),
    };
    let start = start_of_pass(c, state.cursor.as_ref());
    tracing::info!(connector = %c.name, mode = c.extract.mode.name(), start = ?start, "pass starting");

    let (tx, rx) = mpsc::channel::<Chunk>(1);
    let writer = Writer {
        spool: agent.spool.clone(),
        builder: BatchBuilder {
            agent: agent.config.agent_id.clone(),
            connector: c.name.clone(),
            record_type: c.record_type.as_str().to_string(),
            region6: agent.config.region6().to_string(),
            compression: agent.config.spool.compression,
            key: agent.key.clone(),
        },
        chain: state.chain,
        mode: c.extract.mode.clone(),
        generation,
        resumed_at: match &state.cursor {
            Some(CursorState::Timestamp { ts, .. }) => Some(ts.clone()),
            _ => None,
        },
        batch_size: agent.config.spool.batch_size,
        cap: SpoolCap::of(agent),
        committed: committed.clone(),
        pending: None,
        time_zone: agent.config.time_zone,
        stats: PassStats {
            connector: c.name.clone(),
            ..Default::default()
        },
    };
    // The writer runs as its own task so that building, compressing and committing batches
    // overlaps with reading and mapping rows on the other core.
    let write = async {
        tokio::spawn(writer.run(rx))
            .await
            .map_err(|_| PassError::WriterGone(c.name.clone()))?
    };
    let read = async {
        let mut rows_read = 0u64;
        // Whether the source was read to its end: only then may a snapshot turn the keys it
        // did not see into deletes.
        let mut complete = true;
        let timestamp_mode = matches!(c.extract.mode, CursorMode::Timestamp { .. });
        if scan {
            let driver = source::open(c).await?;
            let query = build_query(driver.dialect(), c, &layout, &start, None);
            tracing::debug!(connector = %c.name, sql = %query.sql, "source query");
            let mut rows = driver.rows(&query);
            let mut chunk = Chunk::default();
            let mut last_cursor = state.cursor.clone();
            let mut last_row: Option<Row> = None;
            // A row whose cursor column is NULL does not move the cursor back to nothing.
            let advance = |cursor: &mut Option<CursorState>, row: Option<&Row>| {
                if let Some(next) = row.and_then(|r| cursor_after(c, &layout, r, generation)) {
                    *cursor = Some(next);
                }
            };
            loop {
                // `query_timeout` bounds every wait on the source, whatever the driver does
                // on the server side (statement_timeout, max_statement_time).
                let next = match c.extract.query_timeout {
                    Some(limit) => match tokio::time::timeout(limit, rows.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            return Err(PassError::Source(SourceError::Query {
                                connector: c.name.clone(),
                                message: format!(
                                    "no row within query_timeout ({limit:?}); the query was abandoned"
                                ),
                                retryable: false,
                            }));
                        }
                    },
                    None => rows.next().await,
                };
                let Some(row) = next else { break };
                let row = row?;
                rows_read += 1;
                match mapper.map(&row) {
                    Ok(m) => {
                        chunk.mapped.push(m);
                        if timestamp_mode {
                            chunk.row_ts.push(
                                layout
                                    .cursor
                                    .and_then(|i| row.get(i))
                                    .and_then(CursorValue::from_value),
                            );
                        }
                    }
                    Err(r) => chunk.rejects.push(r),
                }
                // The cursor is needed once per chunk, after its last row: keep that row
                // rather than building a cursor for every row.
                last_row = Some(row);
                if chunk.mapped.len() + chunk.rejects.len() >= agent.config.spool.batch_size {
                    advance(&mut last_cursor, last_row.as_ref());
                    chunk.cursor = last_cursor.clone();
                    let full = std::mem::take(&mut chunk);
                    if tx.send(full).await.is_err()
                        || agent.stop.is_requested()
                        || !in_window(c)
                        || agent.spool_full.load(std::sync::atomic::Ordering::SeqCst)
                    {
                        complete = false;
                        break;
                    }
                    if let Some(p) = progress {
                        p(rows_read);
                    }
                    if let Some(rate) = c.extract.max_rows_per_second {
                        // Source protection: never read faster than the configured rate.
                        let due = Duration::from_secs_f64(rows_read as f64 / rate as f64);
                        let elapsed = started.elapsed();
                        if due > elapsed {
                            tokio::time::sleep(due - elapsed).await;
                        }
                    }
                }
            }
            if !chunk.mapped.is_empty() || !chunk.rejects.is_empty() {
                advance(&mut last_cursor, last_row.as_ref());
                chunk.cursor = last_cursor.clone();
                let _ = tx.send(chunk).await;
            }
        }
        drop(tx);
        Ok::<(u64, bool), PassError>((rows_read, complete))
    };
    let (read, written) = tokio::join!(read, write);
    let mut writer = written?;
    let (rows_read, complete) = read?;
    if matches!(c.extract.mode, CursorMode::Snapshot) && complete {
        writer.finish_snapshot().await?;
    }
    let mut stats = writer.stats;
    stats.rows_read = rows_read;
    stats.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        connector = %c.name, rows_read = stats.rows_read, records = stats.records, deletes = stats.deletes,
        unchanged = stats.unchanged, rejects = stats.rejects, seconds = stats.seconds, "pass finished"
    );
    Ok(stats)
}

/// The cursor position after `row`.
fn cursor_after(
    c: &ConnectorConfig,
    layout: &Layout,
    row: &Row,
    generation: i64,
) -> Option<CursorState> {
    let key = || {
        layout
            .key
            .iter()
            .map(|i| row.get(*i).and_then(CursorValue::from_value))
            .collect::<Option<Vec<_>>>()
    };
    let at = |i: Option<usize>| i.and_then(|i| row.get(i)).and_then(CursorValue::from_value);
    match &c.extract.mode {
        CursorMode::Incrementing { .. } => Some(CursorState::Incrementing {
            last: at(layout.cursor)?,
        }),
        CursorMode::Timestamp { .. } => Some(CursorState::Timestamp {
            ts: at(layout.cursor)?,
            key: key().unwrap_or_default(),
        }),
        CursorMode::Snapshot => Some(CursorState::Snapshot {
            generation,
            phase: SnapshotPhase::Scan,
            after_key: Some(key()?),
        }),
    }
}

/// The spool's size cap, enforced before each commit.
#[derive(Clone)]
struct SpoolCap {
    max_bytes: i64,
    stop: Arc<Stop>,
    delivery_ended: Arc<std::sync::atomic::AtomicBool>,
    full: Arc<std::sync::atomic::AtomicBool>,
}

impl SpoolCap {
    fn of(agent: &Agent) -> SpoolCap {
        SpoolCap {
            max_bytes: i64::try_from(agent.config.spool.max_bytes).unwrap_or(i64::MAX),
            stop: agent.stop.clone(),
            delivery_ended: agent.delivery_ended.clone(),
            full: agent.spool_full.clone(),
        }
    }

    /// Whether the spool is over its cap after dropping delivered batches early
    /// (retention gives way first). Undelivered batches are never dropped.
    async fn over(&self, spool: &Spool) -> Result<bool, PassError> {
        // The database's used pages bound the batch bytes and cost nothing to read; only
        // near the cap are the batches summed.
        if spool.used_bytes().await? <= self.max_bytes
            || spool.batch_bytes().await? <= self.max_bytes
        {
            return Ok(false);
        }
        let dropped = spool.prune_for_space(self.max_bytes).await?;
        if dropped > 0 {
            tracing::warn!(
                batches = dropped,
                "spool full: delivered batches dropped before their retention ended"
            );
        }
        Ok(spool.batch_bytes().await? > self.max_bytes)
    }

    /// Before a commit: when the spool is full, tells the reader to end the pass at its
    /// next chunk (closing its source query) instead of holding the query open while
    /// waiting. What is already read is committed: a few batches over the cap at most.
    async fn check(&self, spool: &Spool) -> Result<(), PassError> {
        if self.over(spool).await? {
            self.full.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    /// Before a pass: returns when the spool has room. While it is full, extraction is
    /// paused here — no source query open — with the alarm raised in the log and in the
    /// spool (`status`, heartbeat), until delivery makes room. A stop request ends the
    /// wait (the pass then stops at once); a delivery that has ended ends the pass with
    /// an error.
    async fn wait_for_room(&self, spool: &Spool) -> Result<(), PassError> {
        self.full.store(false, std::sync::atomic::Ordering::SeqCst);
        if !self.over(spool).await? {
            return Ok(());
        }
        let mut used = spool.batch_bytes().await?;
        let since = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        spool
            .set_agent_state(crate::spool::SPOOL_FULL_SINCE, Some(&since))
            .await?;
        let mut alarmed_at: Option<std::time::Instant> = None;
        while used > self.max_bytes && !self.stop.is_requested() {
            if self
                .delivery_ended
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                // Nothing will make room in this run: end the pass (what is committed
                // stays committed; the next run goes on from there).
                return Err(PassError::Sink(SinkError::Refused {
                    sink: "spool".into(),
                    message: format!(
                        "the spool is full ({used} of {} bytes) and delivery has stopped (see its error); extraction stops here, nothing is lost",
                        self.max_bytes
                    ),
                }));
            }
            if alarmed_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                tracing::error!(batch_bytes = used, max_bytes = self.max_bytes, since = %since, "SPOOL FULL: extraction paused until the sink takes batches; nothing is dropped. Check the sink (`fepd status`), or raise spool.max_bytes");
                alarmed_at = Some(std::time::Instant::now());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.stop.wait() => {}
            }
            spool.prune_for_space(self.max_bytes).await?;
            used = spool.batch_bytes().await?;
        }
        if used <= self.max_bytes {
            spool
                .set_agent_state(crate::spool::SPOOL_FULL_SINCE, None)
                .await?;
            tracing::info!(
                batch_bytes = used,
                "spool has room again; extraction resumes"
            );
        }
        Ok(())
    }
}

/// A unit handed from the writer to the committer.
struct PendingCommit {
    unit: CommitUnit,
    chain_after: Chain,
}

/// The commit stage: compresses batches on blocking threads — the next one while the
/// previous one commits — then commits them in order and tells the delivery task.
async fn committer(
    spool: Spool,
    connector: String,
    rx: mpsc::Receiver<PendingCommit>,
    committed: Arc<Notify>,
    cap: SpoolCap,
) -> Result<(), PassError> {
    let compressed =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) })
            .map(|p| compress(&connector, p))
            .buffered(2);
    futures_util::pin_mut!(compressed);
    while let Some(p) = compressed.next().await {
        cap.check(&spool).await?;
        commit_now(&spool, &connector, p?, &committed).await?;
    }
    Ok(())
}

async fn compress(connector: &str, mut p: PendingCommit) -> Result<PendingCommit, PassError> {
    if let Some(batch) = p.unit.batch.take() {
        let compressed = tokio::task::spawn_blocking(move || batch.compress())
            .await
            .map_err(|_| PassError::WriterGone(connector.to_string()))?
            .map_err(|source| PassError::Build {
                connector: connector.to_string(),
                source,
            })?;
        p.unit.batch = Some(compressed);
    }
    Ok(p)
}

async fn commit_now(
    spool: &Spool,
    connector: &str,
    p: PendingCommit,
    committed: &Notify,
) -> Result<(), PassError> {
    let has_batch = p.unit.batch.is_some();
    let p = compress(connector, p).await?;
    spool.commit(connector, &p.unit, p.chain_after).await?;
    if has_batch {
        committed.notify_one();
    }
    crate::crashpoint::hit("after_spool_commit");
    Ok(())
}

/// Which content hashes of a chunk go into the spool.
enum HashStore {
    All,
    None,
    /// Rows whose timestamp is at or after this one.
    From(CursorValue),
}

struct Writer {
    spool: Spool,
    builder: BatchBuilder,
    chain: Chain,
    mode: CursorMode,
    generation: i64,
    /// Timestamp mode: the cursor timestamp the pass started from (rows at or before it are
    /// being re-read and must be compared with their stored hash).
    resumed_at: Option<CursorValue>,
    batch_size: usize,
    cap: SpoolCap,
    committed: Arc<Notify>,
    /// The committer stage while the scan runs; `None` commits directly (the snapshot's
    /// delete phase, which must see every earlier commit).
    pending: Option<mpsc::Sender<PendingCommit>>,
    time_zone: chrono_tz::Tz,
    stats: PassStats,
}

impl Writer {
    /// Commits every chunk the reader sends; returns itself for the snapshot's delete
    /// phase, which only the reader can allow (it knows whether the scan completed).
    async fn run(mut self, mut rx: mpsc::Receiver<Chunk>) -> Result<Writer, PassError> {
        // Committing (compress, write, fsync) runs as a stage of its own, so the next batch is
        // built while the previous one is made durable.
        let (tx, commits) = mpsc::channel::<PendingCommit>(1);
        let committer = tokio::spawn(committer(
            self.spool.clone(),
            self.builder.connector.clone(),
            commits,
            self.committed.clone(),
            self.cap.clone(),
        ));
        self.pending = Some(tx);
        let mut result = Ok(());
        while let Some(chunk) = rx.recv().await {
            if let Err(e) = self.write_chunk(chunk).await {
                result = Err(e);
                break;
            }
        }
        self.pending = None;
        let committed = committer
            .await
            .map_err(|_| PassError::WriterGone(self.builder.connector.clone()))?;
        // The committer's own error explains a failed hand-over best.
        committed?;
        result?;
        Ok(self)
    }

    fn now(&self) -> DateTime<FixedOffset> {
        Utc::now().with_timezone(&self.time_zone).fixed_offset()
    }

    async fn write_chunk(&mut self, chunk: Chunk) -> Result<(), PassError> {
        let connector = self.builder.connector.clone();
        let (lookup, store_from) = self.hash_policy(&chunk);
        let stored: HashMap<String, String> = if lookup {
            let keys: Vec<&str> = chunk.mapped.iter().map(|m| m.source_key.as_str()).collect();
            self.spool.row_hashes(&connector, &keys).await?
        } else {
            HashMap::new()
        };
        let mut unit = CommitUnit {
            generation: self.generation,
            cursor: chunk.cursor,
            ..Default::default()
        };
        let mut lines_src: Vec<(&Mapped, String)> = Vec::with_capacity(chunk.mapped.len());
        for (i, m) in chunk.mapped.iter().enumerate() {
            let hash_hex = hex::encode(m.content_hash);
            if stored.get(&m.source_key) == Some(&hash_hex) {
                self.stats.unchanged += 1;
                if matches!(self.mode, CursorMode::Snapshot) {
                    unit.seen_keys.push(m.source_key.clone());
                }
                continue;
            }
            let store = match &store_from {
                HashStore::All => true,
                HashStore::None => false,
                HashStore::From(from) => match chunk.row_ts.get(i).and_then(|t| t.as_ref()) {
                    Some(ts) => ts.compare(from).is_none_or(|o| o.is_ge()),
                    None => true,
                },
            };
            if store {
                unit.row_hashes
                    .push((m.source_key.clone(), hash_hex.clone()));
            }
            lines_src.push((m, hash_hex));
        }
        if matches!(self.mode, CursorMode::Snapshot) {
            // A row that is bad now is still there: it must not turn into a delete.
            unit.seen_keys
                .extend(chunk.rejects.iter().map(|r| r.source_key.clone()));
        }
        self.stats.rejects += chunk.rejects.len() as u64;
        unit.rejects = chunk.rejects;
        let lines: Vec<LineInput<'_>> = lines_src
            .iter()
            .map(|(m, h)| LineInput {
                source_key: &m.source_key,
                data: Some(&m.data),
                content_hash_hex: h,
            })
            .collect();
        self.commit(unit, &lines).await
    }

    /// Which rows of a chunk are compared with stored hashes and which hashes are stored.
    ///
    /// Snapshot: all of them (the diff needs every key). Incrementing: none (a row is read
    /// once). Timestamp: only the lag window matters — a row is read again only while its
    /// timestamp is within `lag` of the cursor, and the cursor never moves back — so a chunk
    /// is compared only where it starts at or before the pass's starting cursor, and only
    /// rows within `lag` of the chunk's last timestamp are stored. A backfill of millions of
    /// rows thus costs no per-row spool writes.
    fn hash_policy(&self, chunk: &Chunk) -> (bool, HashStore) {
        match &self.mode {
            CursorMode::Snapshot => (true, HashStore::All),
            CursorMode::Incrementing { .. } => (false, HashStore::None),
            CursorMode::Timestamp { lag, .. } => {
                let first = chunk.row_ts.iter().flatten().next();
                let last = chunk.row_ts.iter().flatten().next_back();
                let lookup = match (first, &self.resumed_at) {
                    (Some(first), Some(resumed)) => {
                        first.compare(resumed).is_none_or(|o| o.is_le())
                    }
                    (None, Some(_)) => true,
                    (_, None) => false,
                };
                let store = match last {
                    Some(last) => HashStore::From(last.minus(*lag)),
                    None => HashStore::All,
                };
                (lookup, store)
            }
        }
    }

    async fn commit(
        &mut self,
        mut unit: CommitUnit,
        lines: &[LineInput<'_>],
    ) -> Result<(), PassError> {
        let mut chain_after = self.chain;
        if !lines.is_empty() {
            let built = self
                .builder
                .build_plain(self.chain, lines, &self.now())
                .map_err(|source| PassError::Build {
                    connector: self.builder.connector.clone(),
                    source,
                })?;
            chain_after = built.chain;
            unit.batch = Some(built);
        }
        let pending = PendingCommit { unit, chain_after };
        match &self.pending {
            Some(tx) => {
                if tx.send(pending).await.is_err() {
                    return Err(PassError::WriterGone(self.builder.connector.clone()));
                }
            }
            None => {
                commit_now(
                    &self.spool,
                    &self.builder.connector,
                    pending,
                    &self.committed,
                )
                .await?
            }
        }
        // The chain advances when the batch is built: the next batch continues it, and
        // commits happen in order, so the spool only ever holds a prefix of this chain.
        self.chain = chain_after;
        if !lines.is_empty() {
            self.stats.records += lines.len() as u64;
            self.stats.batches += 1;
        }
        Ok(())
    }

    /// After a complete scan: every key the scan did not see is emitted as a delete.
    async fn finish_snapshot(&mut self) -> Result<(), PassError> {
        let connector = self.builder.connector.clone();
        let deletes_cursor = CursorState::Snapshot {
            generation: self.generation,
            phase: SnapshotPhase::Deletes,
            after_key: None,
        };
        // Record that the scan completed before emitting deletes, so a restart resumes the
        // deletes instead of rescanning.
        self.commit(
            CommitUnit {
                generation: self.generation,
                cursor: Some(deletes_cursor.clone()),
                ..Default::default()
            },
            &[],
        )
        .await?;
        loop {
            let keys = self
                .spool
                .unseen_keys(&connector, self.generation, self.batch_size as i64)
                .await?;
            if keys.is_empty() {
                break;
            }
            let lines: Vec<LineInput<'_>> = keys
                .iter()
                .map(|k| LineInput {
                    source_key: k,
                    data: None,
                    content_hash_hex: "",
                })
                .collect();
            let unit = CommitUnit {
                generation: self.generation,
                deleted_keys: keys.clone(),
                cursor: Some(deletes_cursor.clone()),
                ..Default::default()
            };
            self.stats.deletes += keys.len() as u64;
            self.commit(unit, &lines).await?;
        }
        let done = CursorState::Snapshot {
            generation: self.generation,
            phase: SnapshotPhase::Done,
            after_key: None,
        };
        self.commit(
            CommitUnit {
                generation: self.generation,
                cursor: Some(done),
                ..Default::default()
            },
            &[],
        )
        .await
    }
}

/// Maps up to `limit` rows of a connector without writing anything: for `fepd preview`.
pub async fn preview(
    config: &AgentConfig,
    c: &ConnectorConfig,
    limit: usize,
) -> Result<Vec<Result<Mapped, Rejected>>, PassError> {
    let layout = Layout::for_connector(c);
    let rules = RuleContext {
        today: Utc::now().with_timezone(&config.time_zone).date_naive(),
        agent_region: Some(config.region_code.clone()),
        time_zone: c.extract.time_zone,
    };
    let mapper = Mapper::new(c, &layout, config.hmac_key.clone(), rules);
    let driver = source::open(c).await?;
    let query = build_query(driver.dialect(), c, &layout, &Start::Beginning, Some(limit));
    let mut rows = driver.rows(&query);
    let mut out = Vec::new();
    while let Some(row) = rows.next().await {
        out.push(mapper.map(&row?));
    }
    Ok(out)
}

/// What `fepd check` found out about a connector's source.
#[derive(Debug)]
pub struct SourceCheck {
    /// Time to open the source and read one row through the real query.
    pub elapsed: Duration,
    /// Whether the account could write to the table (`None`: cannot tell).
    pub can_write: Option<bool>,
}

/// Opens a connector's source and reads one row through the real query: for `fepd check`.
pub async fn check_connector(c: &ConnectorConfig) -> Result<SourceCheck, SourceError> {
    let started = Instant::now();
    let layout = Layout::for_connector(c);
    let driver = source::open(c).await?;
    let query = build_query(driver.dialect(), c, &layout, &Start::Beginning, Some(1));
    {
        let mut rows = driver.rows(&query);
        if let Some(r) = rows.next().await {
            r?;
        }
    }
    let elapsed = started.elapsed();
    let can_write = match &c.extract.relation {
        crate::config::Relation::Table(t) => driver.can_write(t).await.unwrap_or(None),
        crate::config::Relation::Query(_) => None,
    };
    Ok(SourceCheck { elapsed, can_write })
}

/// How many rows the next pass of a connector will read (for `fepd backfill` progress).
pub async fn estimate_rows(agent: &Agent, c: &ConnectorConfig) -> Result<Option<i64>, PassError> {
    let state = agent.spool.state(&c.name).await?;
    let layout = Layout::for_connector(c);
    let driver = source::open(c).await?;
    let start = start_of_pass(c, state.cursor.as_ref());
    let query = build_query(driver.dialect(), c, &layout, &start, None);
    let count = crate::source::SelectQuery {
        sql: format!("SELECT COUNT(*) FROM ({}) fepd_count", query.sql),
        binds: query.binds,
    };
    Ok(driver.scalar_i64(&count).await?)
}
