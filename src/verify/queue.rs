//! `fepd verify --amqp <url> --queue <q>`: the reference consumer for the platform. It
//! consumes a queue bound to `fep.records` and checks every batch as `verify` checks a
//! directory — hashes, ids, canonical lines, seq continuity, chain, signatures — per
//! connector, across messages.
//!
//! A message whose `message_id` was seen before is a re-send (the agent re-publishes
//! unconfirmed batches after a failure): it must be byte-identical to the first copy and
//! is then counted as a whole-batch duplicate; anything else — a different body under a
//! known id, seqs overlapping another batch, a gap — is a break. Control messages
//! (`fep.heartbeat/1`, `fep.rejects/1`) on the same queue are counted and skipped.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use sha2::{Digest, Sha256};

use super::{BatchView, Break, ChainCursor, ChainSummary, Report, header_i64, verify_batch};
use crate::config::redact_url;

/// Where and how long to consume.
#[derive(Debug, Clone)]
pub struct QueueSource {
    /// `amqp://user:pass@host:5672/vhost` or `amqps://…`.
    pub url: String,
    /// Overrides the URL's password (so it need not be on the command line).
    pub password: Option<String>,
    pub queue: String,
    /// CA bundle for `amqps://`.
    pub ca_file: Option<PathBuf>,
    /// Stop when no message came for this long.
    pub idle: Duration,
    /// Stop once this many distinct records were verified.
    pub expect_records: Option<u64>,
    /// Leave the messages in the queue (they are not acknowledged and return to it when
    /// the verifier disconnects).
    pub keep: bool,
}

/// What consuming the queue showed.
#[derive(Debug, Default)]
pub struct QueueReport {
    pub report: Report,
    pub messages: u64,
    /// Re-sent batches, byte-identical to their first copy.
    pub duplicate_batches: u64,
    pub duplicate_records: u64,
    pub control_messages: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("queue {queue} at {url}: {message}")]
pub struct QueueError {
    pub url: String,
    pub queue: String,
    pub message: String,
}

/// AMQP headers as the JSON map [`verify_batch`] reads.
pub fn headers_json(headers: Option<&FieldTable>) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    let Some(headers) = headers else {
        return out;
    };
    for (k, v) in headers.inner() {
        let value = match v {
            AMQPValue::LongString(s) => serde_json::Value::String(s.to_string()),
            AMQPValue::ShortString(s) => serde_json::Value::String(s.as_str().to_string()),
            AMQPValue::LongLongInt(n) => (*n).into(),
            AMQPValue::LongInt(n) => (*n).into(),
            AMQPValue::LongUInt(n) => (*n).into(),
            AMQPValue::ShortInt(n) => (*n).into(),
            AMQPValue::ShortUInt(n) => (*n).into(),
            AMQPValue::ShortShortInt(n) => (*n).into(),
            AMQPValue::ShortShortUInt(n) => (*n).into(),
            other => serde_json::Value::String(format!("{other:?}")),
        };
        out.insert(k.as_str().to_string(), value);
    }
    out
}

/// Per-connector state while consuming.
#[derive(Default)]
struct Connector {
    chain: Option<ChainCursor>,
    summary: ChainSummary,
    broken: bool,
}

/// Consumes and verifies until the queue is idle (or the expected records arrived).
pub async fn verify_queue(
    source: &QueueSource,
    key: &VerifyingKey,
) -> Result<QueueReport, QueueError> {
    let fail = |message: String| QueueError {
        url: redact_url(&source.url),
        queue: source.queue.clone(),
        message,
    };
    let cert_chain = match &source.ca_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| fail(format!("ca file {}: {e}", p.display())))?,
        ),
        None => None,
    };
    // The parser's own message repeats the whole URL, password included.
    let mut uri: lapin::uri::AMQPUri = source.url.parse().map_err(|_| {
        fail("not a valid amqp:// or amqps:// URL (amqp://user@host:5672/vhost)".into())
    })?;
    if let Some(password) = &source.password {
        uri.authority.userinfo.password = password.clone();
    }
    let runtime = lapin::runtime::default_runtime().map_err(|e| fail(e.to_string()))?;
    let connect = Connection::connect_uri_with_config(
        uri,
        ConnectionProperties::default(),
        OwnedTLSConfig {
            identity: None,
            cert_chain,
        },
        runtime,
    );
    let connection = tokio::time::timeout(Duration::from_secs(30), connect)
        .await
        .map_err(|_| fail("no answer within 30s".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| fail(e.to_string()))?;
    // Keeping everything unacknowledged needs an unlimited prefetch.
    let prefetch = if source.keep { 0 } else { 256 };
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut consumer = channel
        .basic_consume(
            source.queue.as_str().into(),
            "fepd-verify".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| fail(e.to_string()))?;

    let mut check = QueueCheck {
        queue: &source.queue,
        key,
        out: QueueReport::default(),
        seen: HashMap::new(),
        connectors: BTreeMap::new(),
    };
    let mut records = 0u64;
    loop {
        if source.expect_records.is_some_and(|n| records >= n) {
            break;
        }
        let delivery = match tokio::time::timeout(source.idle, consumer.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(Err(e))) => return Err(fail(e.to_string())),
            Ok(Some(Ok(d))) => d,
        };
        check.out.messages += 1;
        let headers = headers_json(delivery.properties.headers().as_ref());
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_string())
            .unwrap_or_default();
        let schema = headers.get("fep-schema").and_then(|v| v.as_str());
        let is_control =
            schema.is_some_and(|s| s.starts_with("fep.") && s != crate::envelope::SCHEMA);
        if is_control {
            check.out.control_messages += 1;
        } else {
            records += check.batch(&message_id, &headers, &delivery.data);
        }
        if !source.keep {
            delivery
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| fail(format!("ack: {e}")))?;
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        connection.close(200, "fepd verify done".into()),
    )
    .await;
    let mut out = check.out;
    for (name, c) in check.connectors {
        out.report.chains.insert(name, c.summary);
    }
    Ok(out)
}

/// What consuming has seen so far.
struct QueueCheck<'a> {
    queue: &'a str,
    key: &'a VerifyingKey,
    out: QueueReport,
    /// Digest of each message id's first copy.
    seen: HashMap<String, [u8; 32]>,
    connectors: BTreeMap<String, Connector>,
}

impl QueueCheck<'_> {
    /// Checks one batch message; returns the new records it verified.
    fn batch(
        &mut self,
        message_id: &str,
        headers: &serde_json::Map<String, serde_json::Value>,
        body: &[u8],
    ) -> u64 {
        let digest: [u8; 32] = Sha256::digest(body).into();
        let connector_name = headers
            .get("fep-connector")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string();
        let place = PathBuf::from(format!("amqp:{}#{message_id}", self.queue));
        let c = self.connectors.entry(connector_name.clone()).or_default();
        let breaks = &mut self.out.report.breaks;
        let mut broken = |c: &mut Connector, seq: Option<i64>, message: String| {
            c.broken = true;
            breaks.push(Break {
                connector: connector_name.clone(),
                file: place.clone(),
                seq,
                message,
            });
        };
        if let Some(first) = self.seen.get(message_id) {
            if *first == digest {
                self.out.duplicate_batches += 1;
                self.out.duplicate_records += header_i64(headers, "fep-count").unwrap_or(0) as u64;
            } else {
                broken(
                    c,
                    None,
                    format!("message {message_id} was re-sent with a different body"),
                );
            }
            return 0;
        }
        self.seen.insert(message_id.to_string(), digest);
        if c.broken {
            // After a break the chain cannot be followed; the first break says where.
            return 0;
        }
        match verify_batch(&BatchView { headers, body }, self.key, c.chain.as_ref()) {
            Ok(next) => {
                let first = header_i64(headers, "fep-first-seq").unwrap_or(next.next_seq);
                let before = c.summary.records;
                c.summary.add_batch(first, &next);
                c.chain = Some(next);
                c.summary.records - before
            }
            Err((seq, m)) => {
                broken(c, seq, m);
                0
            }
        }
    }
}
