//! The `dir` sink: each batch becomes `<connector>-<first_seq>.ndjson.gz` (the message body)
//! plus `<connector>-<first_seq>.json` (a manifest with the message's properties and
//! headers). Each file is written under a temporary name, fsynced and renamed; the
//! manifest is written last, so its presence means the batch is complete; the directory is
//! fsynced before the spool marks the batches delivered. Files written this way can cross a one-way gateway and be relayed into the
//! queue on the other side.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::{Receipt, Sink, SinkError};
use crate::control::ControlMessage;
use crate::envelope::{BatchMeta, RECORDS_EXCHANGE};
use crate::spool::StoredBatch;

pub struct DirSink {
    path: PathBuf,
}

/// File names of a batch.
pub fn batch_file_names(meta: &BatchMeta) -> (String, String) {
    let stem = format!("{}-{}", meta.connector, meta.first_seq);
    let body = match meta.content_encoding() {
        Some("gzip") => format!("{stem}.ndjson.gz"),
        _ => format!("{stem}.ndjson"),
    };
    (body, format!("{stem}.json"))
}

/// The manifest of a batch: what an AMQP message would carry besides its body.
pub fn manifest(meta: &BatchMeta, body_file: &str, body: &[u8]) -> serde_json::Value {
    let timestamp = chrono::DateTime::parse_from_rfc3339(&meta.created_at)
        .map(|t| t.timestamp())
        .unwrap_or(0);
    serde_json::json!({
        "exchange": RECORDS_EXCHANGE,
        "routing_key": meta.routing_key(),
        "properties": {
            "delivery_mode": 2,
            "content_type": "application/x-ndjson",
            "content_encoding": meta.content_encoding(),
            "message_id": meta.message_id(),
            "app_id": format!("fepd/{}", env!("CARGO_PKG_VERSION")),
            "timestamp": timestamp,
        },
        "headers": meta.headers(),
        "body_file": body_file,
        "body_sha256": hex::encode(Sha256::digest(body)),
    })
}

impl DirSink {
    pub fn new(path: PathBuf) -> Result<DirSink, SinkError> {
        std::fs::create_dir_all(&path).map_err(|e| SinkError::Io {
            sink: format!("dir {}", path.display()),
            message: format!("cannot create directory: {e}"),
        })?;
        Ok(DirSink { path })
    }

    fn error(&self, message: impl Into<String>) -> SinkError {
        SinkError::Io {
            sink: self.describe(),
            message: message.into(),
        }
    }

    fn write(&self, batch: &StoredBatch) -> std::io::Result<()> {
        let (body_name, manifest_name) = batch_file_names(&batch.meta);
        write_atomic(&self.path, &body_name, &batch.body)?;
        let m = manifest(&batch.meta, &body_name, &batch.body);
        let mut text = serde_json::to_vec_pretty(&m).map_err(std::io::Error::other)?;
        text.push(b'\n');
        write_atomic(&self.path, &manifest_name, &text)
    }
}

/// Writes `dir/name` via a temporary file, fsync and rename.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    crate::crashpoint::hit("dir_before_rename");
    std::fs::rename(&tmp, dir.join(name))
}

impl Sink for DirSink {
    fn describe(&self) -> String {
        format!("dir {}", self.path.display())
    }

    fn window(&self) -> usize {
        // Files are durable once written and the directory synced: a window only groups
        // the directory fsync and the spool's mark transaction.
        4
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            // The renames are durable once the directory is.
            let dir = self.path.clone();
            match tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(self.error(format!("fsync of the directory: {e}"))),
                Err(e) => Err(self.error(format!("writer task failed: {e}"))),
            }
        })
    }

    fn send<'a>(&'a self, batch: &'a StoredBatch) -> BoxFuture<'a, Result<Receipt, SinkError>> {
        Box::pin(async move {
            blocking(|| self.write(batch)).map_err(|e| self.error(e.to_string()))?;
            let ready: Receipt = Box::pin(async { Ok(()) });
            Ok(ready)
        })
    }

    fn send_control<'a>(
        &'a self,
        message: &'a ControlMessage,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let dir = self.path.join(CONTROL_DIR);
            let file = control_file(message);
            blocking(|| {
                std::fs::create_dir_all(&dir)?;
                let mut text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
                text.push(b'\n');
                write_atomic(&dir, &format!("{}.json", message.message_id), &text)?;
                std::fs::File::open(&dir)?.sync_all()
            })
            .map_err(|e| self.error(format!("control message {}: {e}", message.message_id)))
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<String, SinkError>> {
        Box::pin(async move {
            let probe = format!(".fepd-probe-{}", std::process::id());
            blocking(|| {
                write_atomic(&self.path, &probe, b"probe")?;
                std::fs::remove_file(self.path.join(&probe))
            })
            .map_err(|e| self.error(format!("not writable: {e}")))?;
            Ok("writable".to_string())
        })
    }
}

/// Runs blocking file I/O (with fsync) in place, telling a multi-thread runtime so, rather
/// than copying the batch into a blocking task.
fn blocking<T>(f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Subdirectory of the outbox for control messages.
pub const CONTROL_DIR: &str = "control";

/// The file a control message becomes: what the AMQP message would carry, with its body
/// as JSON.
pub fn control_file(message: &ControlMessage) -> serde_json::Value {
    let body: serde_json::Value =
        serde_json::from_slice(&message.body).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "exchange": crate::control::CONTROL_EXCHANGE,
        "routing_key": message.routing_key,
        "message_id": message.message_id,
        "schema": message.schema,
        "body": body,
    })
}
