//! Sinks deliver spooled batches, in sequence order per connector, and a batch is marked
//! delivered only after the sink has made it durable (the dir sink: fsynced and renamed;
//! the AMQP sink: confirmed by the broker). A failed delivery leaves the batch in the
//! spool to be retried; a sink must therefore accept the same batch twice harmlessly.
//!
//! [`deliver_pending`] keeps a window of batches in flight: it hands batches to the sink
//! while earlier ones await their confirm, and marks confirmed batches delivered in
//! groups (one spool transaction each). Sinks also carry the agent's control messages
//! (heartbeats, reject reports) to the platform.

pub mod amqp;
pub mod dir;

use futures_util::future::BoxFuture;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{AgentConfig, SinkConfig};
use crate::control::ControlMessage;
use crate::spool::{Spool, SpoolError, StoredBatch};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A failure that may pass: the broker or the network is down, a confirm did not come.
    #[error("sink {sink}: {message}")]
    Io { sink: String, message: String },
    /// A failure that will not pass by waiting: a certificate refused, a login refused, a
    /// missing exchange that may not be declared. Ops must change something.
    #[error("sink {sink}: {message}")]
    Refused { sink: String, message: String },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl SinkError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Io { .. } => true,
            SinkError::Refused { .. } => false,
            SinkError::Spool(e) => e.is_retryable(),
        }
    }
}

/// Resolves when a batch handed to a sink is durable (confirmed by the broker).
pub type Receipt = BoxFuture<'static, Result<(), SinkError>>;

/// A delivery target.
pub trait Sink: Send + Sync {
    /// Short description for logs and status ("dir /var/spool/fepd/outbox").
    fn describe(&self) -> String;

    /// How many batches may be in flight (handed over, not yet confirmed).
    fn window(&self) -> usize {
        1
    }

    /// After extraction has finished, how long failed deliveries are retried before the run
    /// gives up (the batches stay spooled).
    fn retry_timeout(&self) -> Duration {
        Duration::from_secs(60)
    }

    /// Hands one batch over. The returned receipt resolves once the batch is durable.
    /// Sending the same batch again must be harmless.
    fn send<'a>(&'a self, batch: &'a StoredBatch) -> BoxFuture<'a, Result<Receipt, SinkError>>;

    /// Makes every batch sent so far durable (the dir sink: fsync the directory).
    /// Batches are marked delivered in the spool only after this returns.
    fn sync(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }

    /// Forgets the connection after a failure, so the next send starts afresh.
    fn reset(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Delivers one control message and waits until it is durable.
    fn send_control<'a>(
        &'a self,
        message: &'a ControlMessage,
    ) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Checks that the sink is reachable and usable now (`fepd check`).
    fn probe(&self) -> BoxFuture<'_, Result<String, SinkError>>;
}

/// Builds the configured sink.
pub fn build(config: &AgentConfig) -> Result<Arc<dyn Sink>, SinkError> {
    match &config.sink {
        SinkConfig::Dir { path } => Ok(Arc::new(dir::DirSink::new(path.clone())?)),
        SinkConfig::Amqp(a) => Ok(Arc::new(amqp::AmqpSink::new((**a).clone())?)),
    }
}

/// What a delivery round did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delivered {
    pub batches: u64,
    pub records: u64,
}

impl std::ops::AddAssign for Delivered {
    fn add_assign(&mut self, other: Delivered) {
        self.batches += other.batches;
        self.records += other.records;
    }
}

/// Items handed to a sink and awaiting their receipts, oldest first, at most the sink's
/// window of them. Shared by delivery from the spool and `fepd relay`.
pub struct Window<T> {
    size: usize,
    in_flight: VecDeque<(T, Receipt)>,
}

impl<T> Window<T> {
    pub fn new(sink: &dyn Sink) -> Window<T> {
        let size = sink.window().max(1);
        Window {
            size,
            in_flight: VecDeque::with_capacity(size),
        }
    }

    pub fn room(&self) -> usize {
        self.size - self.in_flight.len()
    }

    pub fn push(&mut self, item: T, receipt: Receipt) {
        self.in_flight.push_back((item, receipt));
    }

    /// Waits for the oldest item's receipt; `None` when nothing is in flight.
    pub async fn confirm_oldest(&mut self) -> Result<Option<T>, SinkError> {
        match self.in_flight.pop_front() {
            Some((item, receipt)) => receipt.await.map(|()| Some(item)),
            None => Ok(None),
        }
    }
}

/// A batch in flight: what is needed to mark it delivered once its receipt resolves.
struct InFlight {
    connector: String,
    first_seq: i64,
    records: u64,
}

/// Confirmed batches not yet marked delivered.
#[derive(Default)]
struct Confirmed {
    batches: Vec<(String, i64)>,
    records: u64,
}

impl Confirmed {
    /// Syncs the sink and marks the confirmed batches delivered, in one transaction.
    async fn flush(
        &mut self,
        spool: &Spool,
        sink: &dyn Sink,
        done: &mut Delivered,
    ) -> Result<(), SinkError> {
        if self.batches.is_empty() {
            return Ok(());
        }
        sink.sync().await?;
        let keys: Vec<(&str, i64)> = self.batches.iter().map(|(c, s)| (c.as_str(), *s)).collect();
        spool.mark_delivered(&keys).await?;
        *done += Delivered {
            batches: self.batches.len() as u64,
            records: self.records,
        };
        self.batches.clear();
        self.records = 0;
        Ok(())
    }
}

/// Delivers every pending batch, oldest first per connector, until none is left, keeping
/// up to the sink's window in flight. On a failure the batches confirmed so far are
/// marked, the sink is reset and the error returned; unconfirmed batches stay pending and
/// are re-sent by the next call, with the same message ids and seqs.
pub async fn deliver_pending(spool: &Spool, sink: &dyn Sink) -> Result<Delivered, SinkError> {
    let mut done = Delivered::default();
    deliver_pending_into(spool, sink, &mut done).await?;
    Ok(done)
}

/// [`deliver_pending`], adding what was delivered to `done` — also what was delivered
/// before a failure.
pub async fn deliver_pending_into(
    spool: &Spool,
    sink: &dyn Sink,
    done: &mut Delivered,
) -> Result<(), SinkError> {
    let mut confirmed = Confirmed::default();
    let result = deliver_window(spool, sink, &mut confirmed, done).await;
    let flushed = confirmed.flush(spool, sink, done).await;
    if result.is_err() || flushed.is_err() {
        sink.reset().await;
    }
    result.and(flushed)
}

async fn deliver_window(
    spool: &Spool,
    sink: &dyn Sink,
    confirmed: &mut Confirmed,
    done: &mut Delivered,
) -> Result<(), SinkError> {
    let mut window: Window<InFlight> = Window::new(sink);
    // Mark in groups: one spool transaction (and fsync) per few batches, not per batch.
    let mark_every = sink.window().max(1).div_ceil(2);
    // The last batch handed over, to fetch the ones after it.
    let mut position: Option<(String, i64)> = None;
    let mut exhausted = false;
    loop {
        if !exhausted && window.room() > 0 {
            // Only a few bodies at a time are read into memory; the sink copies each into
            // its frames, so a body is not held while its batch awaits a confirm.
            let want = window.room().min(4) as i64;
            let batches = spool.pending_after(position.as_ref(), want).await?;
            if batches.is_empty() {
                exhausted = true;
            }
            for b in batches {
                let receipt = sink.send(&b).await?;
                crate::crashpoint::hit("after_sink_write");
                position = Some((b.meta.connector.clone(), b.meta.first_seq));
                let f = InFlight {
                    connector: b.meta.connector,
                    first_seq: b.meta.first_seq,
                    records: b.meta.count as u64,
                };
                window.push(f, receipt);
            }
            continue;
        }
        match window.confirm_oldest().await? {
            Some(f) => {
                tracing::debug!(connector = %f.connector, first_seq = f.first_seq, "batch confirmed");
                confirmed.batches.push((f.connector, f.first_seq));
                confirmed.records += f.records;
                if confirmed.batches.len() >= mark_every {
                    confirmed.flush(spool, sink, done).await?;
                }
            }
            None => {
                confirmed.flush(spool, sink, done).await?;
                // Batches committed meanwhile for a connector already passed are found
                // by starting over; nothing pending from the start means all is done.
                if position.is_none() {
                    return Ok(());
                }
                position = None;
                exhausted = false;
            }
        }
    }
}
