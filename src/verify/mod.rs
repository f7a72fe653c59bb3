//! `fepd verify`: the platform side's proof that delivered batches are complete, unaltered
//! and in order. It recomputes every record's hash and id, checks that each line is
//! byte-for-byte canonical, that sequence numbers run without gap or repeat across files,
//! that each batch continues the previous batch's chain, and each batch's Ed25519
//! signature. It names the first file and seq where a connector's chain breaks.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::envelope::{SCHEMA, decode_body, record_id, signing_payload};

pub mod queue;

/// One break in a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub connector: String,
    pub file: PathBuf,
    /// The seq at which the chain breaks, when known.
    pub seq: Option<i64>,
    pub message: String,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: connector {}", self.file.display(), self.connector)?;
        if let Some(s) = self.seq {
            write!(f, ", seq {s}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What verified cleanly, per connector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainSummary {
    pub batches: u64,
    pub records: u64,
    pub first_seq: i64,
    pub last_seq: i64,
    pub head_hash: String,
}

impl ChainSummary {
    /// Adds a verified batch that started at `first_seq` and left the chain at `next`.
    pub fn add_batch(&mut self, first_seq: i64, next: &ChainCursor) {
        if self.batches == 0 {
            self.first_seq = first_seq;
        }
        self.batches += 1;
        self.records += (next.next_seq - first_seq).max(0) as u64;
        self.last_seq = next.next_seq - 1;
        self.head_hash = hex::encode(next.head);
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub chains: BTreeMap<String, ChainSummary>,
    pub breaks: Vec<Break>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.breaks.is_empty()
    }
}

/// One batch as read back, for the record checks shared by the dir and queue verifiers.
pub struct BatchView<'a> {
    pub headers: &'a serde_json::Map<String, serde_json::Value>,
    pub body: &'a [u8],
}

/// Running state of one connector's chain.
#[derive(Debug, Clone)]
pub struct ChainCursor {
    pub next_seq: i64,
    pub head: [u8; 32],
}

fn header_str<'h>(
    h: &'h serde_json::Map<String, serde_json::Value>,
    k: &str,
) -> Result<&'h str, String> {
    h.get(k)
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("header {k} missing or not a string"))
}

fn header_i64(h: &serde_json::Map<String, serde_json::Value>, k: &str) -> Result<i64, String> {
    match h.get(k) {
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("header {k} is not an integer")),
        Some(serde_json::Value::String(s)) => s
            .parse()
            .map_err(|_| format!("header {k} is not an integer")),
        _ => Err(format!("header {k} missing")),
    }
}

fn hash32(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text).ok()?.try_into().ok()
}

/// Verifies one batch against its headers and the chain so far. On success returns the
/// chain after the batch; on failure the seq where it broke (if any) and why.
pub fn verify_batch(
    batch: &BatchView<'_>,
    key: &VerifyingKey,
    chain: Option<&ChainCursor>,
) -> Result<ChainCursor, (Option<i64>, String)> {
    let h = batch.headers;
    let bad = |m: String| (None, m);
    if header_str(h, "fep-schema").map_err(bad)? != SCHEMA {
        return Err((None, format!("fep-schema is not {SCHEMA}")));
    }
    let agent = header_str(h, "fep-agent").map_err(bad)?;
    let connector = header_str(h, "fep-connector").map_err(bad)?;
    let record_type = header_str(h, "fep-record-type").map_err(bad)?;
    let first = header_i64(h, "fep-first-seq").map_err(bad)?;
    let last = header_i64(h, "fep-last-seq").map_err(bad)?;
    let count = header_i64(h, "fep-count").map_err(bad)?;
    let prev_hex = header_str(h, "fep-prev-hash").map_err(bad)?;
    let head_hex = header_str(h, "fep-head-hash").map_err(bad)?;
    let sig_b64 = header_str(h, "fep-signature").map_err(bad)?;

    let sig_bytes = base64::engine::general_purpose::STANDARD
        .decode(sig_b64)
        .map_err(|_| (Some(first), "signature is not base64".to_string()))?;
    let sig = Signature::from_slice(&sig_bytes)
        .map_err(|_| (Some(first), "signature has the wrong length".to_string()))?;
    let payload = signing_payload(agent, connector, first, last, prev_hex, head_hex);
    key.verify(payload.as_bytes(), &sig)
        .map_err(|_| (Some(first), "batch signature does not verify with this public key (headers altered, or another agent's key)".to_string()))?;

    let prev = hash32(prev_hex).ok_or_else(|| {
        (
            Some(first),
            "fep-prev-hash is not 32 bytes of hex".to_string(),
        )
    })?;
    if let Some(c) = chain {
        if first != c.next_seq {
            let msg = if first > c.next_seq {
                format!("gap: seq {} .. {} missing", c.next_seq, first - 1)
            } else {
                format!("seq {first} repeats (expected {})", c.next_seq)
            };
            return Err((Some(first.min(c.next_seq)), msg));
        }
        if prev != c.head {
            return Err((
                Some(first),
                "batch does not continue the previous batch's chain (prev hash differs)".into(),
            ));
        }
    } else if first == 1 && prev != [0u8; 32] {
        return Err((Some(1), "seq 1 must follow 32 zero bytes".into()));
    }

    let text = decode_body(batch.body)
        .map_err(|e| (Some(first), format!("body does not decompress: {e}")))?;
    let mut head = prev;
    let mut seq = first;
    let mut n = 0i64;
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        n += 1;
        check_line(line, seq, &mut head, agent, connector, record_type)
            .map_err(|m| (Some(seq), m))?;
        seq += 1;
    }
    if n != count || seq - 1 != last {
        return Err((
            Some(seq),
            format!(
                "batch holds {n} records (seq {first}..{}), headers say {count} (..{last})",
                seq - 1
            ),
        ));
    }
    if hex::encode(head) != head_hex {
        return Err((Some(last), "head hash differs from fep-head-hash".into()));
    }
    Ok(ChainCursor {
        next_seq: seq,
        head,
    })
}

fn check_line(
    line: &[u8],
    seq: i64,
    head: &mut [u8; 32],
    agent: &str,
    connector: &str,
    record_type: &str,
) -> Result<(), String> {
    let mut v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("line is not JSON: {e}"))?;
    let canonical_line = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
    if canonical_line != line {
        return Err("line is not in canonical form (altered?)".into());
    }
    let obj = v.as_object_mut().ok_or("line is not a JSON object")?;
    let stated = obj
        .remove("hash")
        .and_then(|h| h.as_str().map(str::to_string))
        .ok_or("no hash")?;
    if obj.get("seq").and_then(|s| s.as_i64()) != Some(seq) {
        return Err(format!(
            "expected seq {seq}, found {}",
            obj.get("seq").map(|s| s.to_string()).unwrap_or_default()
        ));
    }
    let canon = serde_json::to_vec(&*obj).map_err(|e| e.to_string())?;
    let mut h = Sha256::new();
    h.update(*head);
    h.update(&canon);
    let computed: [u8; 32] = h.finalize().into();
    if hex::encode(computed) != stated {
        return Err("hash does not match the record (record altered, or chain broken)".into());
    }
    if obj.get("type").and_then(|t| t.as_str()) != Some(record_type) {
        return Err(format!(
            "type differs from the batch's record type {record_type}"
        ));
    }
    let source_key = obj
        .get("source_key")
        .and_then(|k| k.as_str())
        .ok_or("no source_key")?;
    let content = match (obj.get("op").and_then(|o| o.as_str()), obj.get("data")) {
        (Some("upsert"), Some(d)) if d.is_object() => hex::encode(Sha256::digest(
            serde_json::to_vec(d).map_err(|e| e.to_string())?,
        )),
        (Some("delete"), Some(serde_json::Value::Null)) => "deleted".to_string(),
        _ => return Err("op/data inconsistent (upsert needs an object, delete needs null)".into()),
    };
    let id = record_id(agent, connector, record_type, source_key, &content);
    if obj.get("id").and_then(|i| i.as_str()) != Some(id.as_str()) {
        return Err("id does not match agent|connector|type|source_key|content hash".into());
    }
    *head = computed;
    Ok(())
}

/// Verifies every batch in a dir-sink directory.
pub fn verify_dir(dir: &Path, key: &VerifyingKey) -> std::io::Result<Report> {
    struct Entry {
        first_seq: i64,
        manifest_path: PathBuf,
        manifest: serde_json::Value,
    }
    let mut report = Report::default();
    let mut by_connector: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let parsed: Result<serde_json::Value, String> = std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
        let m = match parsed {
            Ok(m) => m,
            Err(e) => {
                report.breaks.push(Break {
                    connector: "?".into(),
                    file: p.clone(),
                    seq: None,
                    message: format!("manifest unreadable: {e}"),
                });
                continue;
            }
        };
        let connector = m["headers"]["fep-connector"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        let first_seq = m["headers"]["fep-first-seq"].as_i64().unwrap_or(0);
        by_connector.entry(connector).or_default().push(Entry {
            first_seq,
            manifest_path: p,
            manifest: m,
        });
    }
    for (connector, mut entries) in by_connector {
        entries.sort_by_key(|e| e.first_seq);
        let mut chain: Option<ChainCursor> = None;
        let mut summary = ChainSummary {
            first_seq: entries.first().map(|e| e.first_seq).unwrap_or(0),
            ..Default::default()
        };
        for e in &entries {
            let body_name = e.manifest["body_file"].as_str().unwrap_or_default();
            let body_path = dir.join(body_name);
            let fail = |seq: Option<i64>, message: String| Break {
                connector: connector.clone(),
                file: body_path.clone(),
                seq,
                message,
            };
            let body = match std::fs::read(&body_path) {
                Ok(b) => b,
                Err(err) => {
                    report.breaks.push(fail(
                        Some(e.first_seq),
                        format!(
                            "body file missing: {err} (manifest {})",
                            e.manifest_path.display()
                        ),
                    ));
                    break;
                }
            };
            if e.manifest["body_sha256"].as_str()
                != Some(hex::encode(Sha256::digest(&body)).as_str())
            {
                // Not fatal on its own — the record checks below say exactly what changed —
                // but it must not pass silently either.
                let Some(headers) = e.manifest["headers"].as_object() else {
                    report
                        .breaks
                        .push(fail(None, "manifest has no headers".into()));
                    break;
                };
                let detail = match verify_batch(
                    &BatchView {
                        headers,
                        body: &body,
                    },
                    key,
                    chain.as_ref(),
                ) {
                    Err((seq, m)) => fail(seq, m),
                    Ok(_) => fail(
                        Some(e.first_seq),
                        "body differs from the manifest's body_sha256".into(),
                    ),
                };
                report.breaks.push(detail);
                break;
            }
            let Some(headers) = e.manifest["headers"].as_object() else {
                report
                    .breaks
                    .push(fail(None, "manifest has no headers".into()));
                break;
            };
            match verify_batch(
                &BatchView {
                    headers,
                    body: &body,
                },
                key,
                chain.as_ref(),
            ) {
                Ok(next) => {
                    summary.add_batch(e.first_seq, &next);
                    chain = Some(next);
                }
                Err((seq, m)) => {
                    report.breaks.push(fail(seq, m));
                    break;
                }
            }
        }
        report.chains.insert(connector, summary);
    }
    Ok(report)
}
