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

use super::{Sink, SinkError};
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

    fn sync(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            // The renames are durable once the directory is.
            let dir = self.path.clone();
            match tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(SinkError::Io {
                    sink: self.describe(),
                    message: format!("fsync of the directory: {e}"),
                }),
                Err(e) => Err(SinkError::Io {
                    sink: self.describe(),
                    message: format!("writer task failed: {e}"),
                }),
            }
        })
    }

    fn deliver<'a>(&'a self, batch: &'a StoredBatch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            // File I/O with fsync blocks: tell the runtime, rather than copying the batch
            // into a blocking task.
            let written = match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::MultiThread => {
                    tokio::task::block_in_place(|| self.write(batch))
                }
                _ => self.write(batch),
            };
            written.map_err(|e| SinkError::Io {
                sink: self.describe(),
                message: e.to_string(),
            })
        })
    }
}
