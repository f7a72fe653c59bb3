//! `fepd relay <dir>`: on the far side of a one-way gateway (网闸), publishes the batch
//! files a dir sink wrote — and its control messages — into the configured sink (the
//! platform's queue), exactly as the agent would have: same body, properties, headers and
//! `message_id`.
//!
//! Idempotent: every confirmed message id is appended to `<dir>/.relayed` (fsynced), and
//! files already listed there are skipped. A file relayed twice anyway (the log lost, two
//! relays at once) is the same message with the same id and seqs, which consumers
//! recognise as a whole-batch duplicate. A file whose body does not match its manifest's
//! digest is not relayed, nor anything after it of the same connector (order is kept): it
//! is reported, and the relay fails so ops look at it.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::control::ControlMessage;
use crate::envelope::BatchMeta;
use crate::sink::dir::CONTROL_DIR;
use crate::sink::{Sink, SinkError, Window};
use crate::spool::StoredBatch;

/// The log of relayed message ids, inside the relayed directory.
pub const RELAYED_LOG: &str = ".relayed";

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// What a relay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RelayReport {
    pub batches: u64,
    pub records: u64,
    pub control: u64,
    /// Files skipped because they were relayed before.
    pub skipped: u64,
    /// Files not relayed because they are damaged, with why.
    pub damaged: Vec<(PathBuf, String)>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RelayError + '_ {
    move |source| RelayError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct RelayLog {
    path: PathBuf,
    done: HashSet<String>,
    /// Per connector, the seq the next relayed batch must start with (from the log lines
    /// `<message_id> <next_seq>`; control messages have no seq).
    next_seq: HashMap<String, i64>,
    file: std::fs::File,
}

impl RelayLog {
    fn open(dir: &Path) -> Result<RelayLog, RelayError> {
        let path = dir.join(RELAYED_LOG);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut done = HashSet::new();
        let mut next_seq: HashMap<String, i64> = HashMap::new();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let Some(id) = parts.next() else { continue };
            done.insert(id.to_string());
            if let (Some(next), Some(connector)) = (
                parts.next().and_then(|n| n.parse::<i64>().ok()),
                id.split('/').nth(1),
            ) {
                let e = next_seq.entry(connector.to_string()).or_insert(next);
                *e = (*e).max(next);
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(RelayLog {
            path,
            done,
            next_seq,
            file,
        })
    }

    /// Appends confirmed messages: `(message_id, next seq of its connector)`.
    fn record(&mut self, relayed: &[(String, Option<i64>)]) -> Result<(), RelayError> {
        if relayed.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for (id, next) in relayed {
            text.push_str(id);
            if let Some(n) = next {
                text.push_str(&format!(" {n}"));
            }
            text.push('\n');
            self.done.insert(id.clone());
        }
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(io_err(&self.path))
    }
}

/// A batch file found in the directory, checked against its manifest.
fn read_batch(dir: &Path, manifest_path: &Path) -> Result<StoredBatch, String> {
    let manifest: serde_json::Value = std::fs::read(manifest_path)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| format!("manifest is not JSON: {e}"))
        })?;
    let meta = BatchMeta::from_manifest(&manifest)?;
    let body_file = manifest["body_file"]
        .as_str()
        .ok_or("manifest has no body_file")?;
    let body = std::fs::read(dir.join(body_file)).map_err(|e| format!("body {body_file}: {e}"))?;
    if manifest["body_sha256"].as_str() != Some(hex::encode(Sha256::digest(&body)).as_str()) {
        return Err(format!(
            "body {body_file} does not match the manifest's body_sha256 (damaged in transit?)"
        ));
    }
    Ok(StoredBatch { meta, body })
}

/// Relays every batch (in sequence order per connector) and control message in `dir`
/// not relayed before.
pub async fn relay_dir(dir: &Path, sink: &dyn Sink) -> Result<RelayReport, RelayError> {
    let mut log = RelayLog::open(dir)?;
    let mut report = RelayReport::default();
    let mut manifests: Vec<(String, i64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        // `<connector>-<first_seq>.json`: sort by connector, then numerically by seq.
        let stem = name.trim_end_matches(".json");
        let (connector, seq) = stem
            .rsplit_once('-')
            .and_then(|(c, s)| Some((c.to_string(), s.parse::<i64>().ok()?)))
            .unwrap_or((stem.to_string(), 0));
        manifests.push((connector, seq, path));
    }
    manifests.sort();

    // Confirmed message ids go to the log also when a later batch fails, so that a
    // retry does not send them again.
    let mut confirmed: Vec<(String, Option<i64>)> = Vec::new();
    let sent = relay_batches(dir, sink, &mut log, &manifests, &mut report, &mut confirmed).await;
    let synced = sink.sync().await;
    log.record(&confirmed)?;
    sent?;
    synced?;

    report.control = relay_control(dir, sink, &mut log, &mut report.damaged).await?;
    Ok(report)
}

/// Relays the batch files in order, in a window of unconfirmed ones, holding a connector
/// back at a damaged file or a gap in its seqs. Confirmed message ids (with their
/// connector's next seq) are logged a window at a time; the rest are left in `confirmed`
/// for the caller to log, also after a failure.
async fn relay_batches(
    dir: &Path,
    sink: &dyn Sink,
    log: &mut RelayLog,
    manifests: &[(String, i64, PathBuf)],
    report: &mut RelayReport,
    confirmed: &mut Vec<(String, Option<i64>)>,
) -> Result<(), RelayError> {
    let mut window: Window<((String, Option<i64>), u64)> = Window::new(sink);
    // What each connector's next batch must start with, as relayed so far.
    let mut expected = log.next_seq.clone();
    // A connector whose file is damaged or incomplete is held there: relaying its later
    // batches first would put them out of order on the queue.
    let mut held: HashSet<String> = HashSet::new();
    for (connector, _, path) in manifests {
        if held.contains(connector) {
            report.damaged.push((
                path.clone(),
                "held back behind an earlier file of the same connector".into(),
            ));
            continue;
        }
        let batch = match read_batch(dir, path) {
            Ok(b) => b,
            Err(why) => {
                tracing::error!(file = %path.display(), reason = %why, "not relayed");
                report.damaged.push((path.clone(), why));
                held.insert(connector.clone());
                continue;
            }
        };
        let id = batch.meta.message_id();
        if log.done.contains(&id) {
            report.skipped += 1;
            continue;
        }
        if let Some(&next) = expected.get(&batch.meta.connector)
            && batch.meta.first_seq > next
        {
            let why = format!(
                "seq {next}..{} of {} has not arrived yet; this and later files wait for it",
                batch.meta.first_seq - 1,
                batch.meta.connector
            );
            tracing::warn!(file = %path.display(), reason = %why, "not relayed yet");
            report.damaged.push((path.clone(), why));
            held.insert(connector.clone());
            continue;
        }
        expected.insert(batch.meta.connector.clone(), batch.meta.last_seq + 1);
        if window.room() == 0
            && let Some((id, records)) = window.confirm_oldest().await?
        {
            report.batches += 1;
            report.records += records;
            confirmed.push(id);
            if confirmed.len() >= sink.window() {
                sink.sync().await?;
                log.record(confirmed)?;
                confirmed.clear();
            }
        }
        let receipt = sink.send(&batch).await?;
        window.push(
            ((id, Some(batch.meta.last_seq + 1)), batch.meta.count as u64),
            receipt,
        );
    }
    while let Some((id, records)) = window.confirm_oldest().await? {
        report.batches += 1;
        report.records += records;
        confirmed.push(id);
    }
    Ok(())
}

/// Relays the control messages of `<dir>/control/`.
async fn relay_control(
    dir: &Path,
    sink: &dyn Sink,
    log: &mut RelayLog,
    damaged: &mut Vec<(PathBuf, String)>,
) -> Result<u64, RelayError> {
    let control_dir = dir.join(CONTROL_DIR);
    let entries = match std::fs::read_dir(&control_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(&control_dir)(e)),
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err(&control_dir))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.starts_with('.') && name.ends_with(".json") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut sent = 0;
    for path in paths {
        let message = match read_control(&path) {
            Ok(m) => m,
            Err(why) => {
                damaged.push((path, why));
                continue;
            }
        };
        if log.done.contains(&message.message_id) {
            continue;
        }
        sink.send_control(&message).await?;
        log.record(&[(message.message_id.clone(), None)])?;
        sent += 1;
    }
    Ok(sent)
}

fn read_control(path: &Path) -> Result<ControlMessage, String> {
    let file: serde_json::Value = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("not JSON: {e}")))?;
    let schema = match file["schema"].as_str() {
        Some(crate::control::HEARTBEAT_SCHEMA) => crate::control::HEARTBEAT_SCHEMA,
        Some(crate::control::REJECTS_SCHEMA) => crate::control::REJECTS_SCHEMA,
        other => return Err(format!("unknown control schema {other:?}")),
    };
    Ok(ControlMessage {
        schema,
        routing_key: file["routing_key"]
            .as_str()
            .ok_or("routing_key missing")?
            .to_string(),
        message_id: file["message_id"]
            .as_str()
            .ok_or("message_id missing")?
            .to_string(),
        body: file["body"].to_string().into_bytes(),
    })
}
