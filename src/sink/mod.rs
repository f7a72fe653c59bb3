//! Sinks deliver spooled batches, in sequence order per connector, and a batch is marked
//! delivered only after the sink has made it durable (the dir sink: fsynced and renamed;
//! the AMQP sink: confirmed by the broker). A failed delivery leaves the batch in the
//! spool to be retried; a sink must therefore accept the same batch twice harmlessly.

pub mod amqp;
pub mod dir;

use futures_util::future::BoxFuture;
use std::sync::Arc;

use crate::config::{AgentConfig, SinkConfig};
use crate::spool::{Spool, SpoolError, StoredBatch};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: {message}")]
    Io { sink: String, message: String },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl SinkError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Io { .. } => true,
            SinkError::Spool(e) => e.is_retryable(),
        }
    }
}

/// A delivery target.
pub trait Sink: Send + Sync {
    /// Short description for logs and status ("dir /var/spool/fepd/outbox").
    fn describe(&self) -> String;

    /// Delivers one batch. Delivering the same batch again must be harmless.
    fn deliver<'a>(&'a self, batch: &'a StoredBatch) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Makes every batch delivered so far durable (the dir sink: fsync the directory).
    /// Batches are marked delivered in the spool only after this returns.
    fn sync(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Builds the configured sink.
pub fn build(config: &AgentConfig) -> Result<Arc<dyn Sink>, SinkError> {
    match &config.sink {
        SinkConfig::Dir { path } => Ok(Arc::new(dir::DirSink::new(path.clone())?)),
        SinkConfig::Amqp(a) => Ok(Arc::new(amqp::AmqpSink::new(a.clone())?)),
    }
}

/// What a delivery round did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delivered {
    pub batches: u64,
    pub records: u64,
}

/// Delivers every pending batch, oldest first per connector, until none is left.
pub async fn deliver_pending(spool: &Spool, sink: &dyn Sink) -> Result<Delivered, SinkError> {
    let mut done = Delivered::default();
    loop {
        // A few batches at a time: bodies are held in memory while delivered.
        let batches = spool.pending(2).await?;
        if batches.is_empty() {
            return Ok(done);
        }
        for b in &batches {
            sink.deliver(b).await?;
            crate::crashpoint::hit("after_sink_write");
            tracing::debug!(connector = %b.meta.connector, first_seq = b.meta.first_seq, last_seq = b.meta.last_seq, "batch delivered");
        }
        // One sync and one spool transaction per round instead of per batch. A crash in
        // between only means the round is delivered again, which sinks accept.
        sink.sync().await?;
        let delivered: Vec<(&str, i64)> = batches
            .iter()
            .map(|b| (b.meta.connector.as_str(), b.meta.first_seq))
            .collect();
        spool.mark_delivered(&delivered).await?;
        done.batches += batches.len() as u64;
        done.records += batches.iter().map(|b| b.meta.count as u64).sum::<u64>();
    }
}
