//! The message contract `fep.batch/1`: record lines, the hash chain, record ids, batch
//! signatures and headers. The spool uses it to build batches (sequence numbers are
//! assigned there), the sinks to label them, `verify` to check them.
//!
//! A record line is canonical JSON (RFC 8785 — with only strings, integers, arrays and
//! objects that is compact JSON with sorted keys) plus its `"hash"`, which sorts between
//! `"data"` and `"id"`. So the wire line is itself canonical, and its hash is
//! `SHA-256(prev_hash_bytes || line without "hash")`.

use std::io::Write;

use base64::Engine as _;
use chrono::{DateTime, FixedOffset};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use crate::config::Compression;
use crate::mapping::write_json_str;

/// Value of the `fep-schema` header.
pub const SCHEMA: &str = "fep.batch/1";
/// Records exchange.
pub const RECORDS_EXCHANGE: &str = "fep.records";

/// `upsert` or `delete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Upsert,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
        }
    }
}

/// The idempotency key: the same version of the same source row always has the same id.
/// `content` is the hex content hash, or the literal `deleted`.
pub fn record_id(
    agent: &str,
    connector: &str,
    record_type: &str,
    source_key: &str,
    content: &str,
) -> String {
    let mut h = Sha256::new();
    for (i, part) in [agent, connector, record_type, source_key, content]
        .iter()
        .enumerate()
    {
        if i > 0 {
            h.update(b"|");
        }
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// One record to be written into a batch.
pub struct LineInput<'a> {
    pub source_key: &'a str,
    /// Canonical JSON of `data`, or `None` for a delete.
    pub data: Option<&'a [u8]>,
    /// Hex content hash (for the id); ignored for deletes.
    pub content_hash_hex: &'a str,
}

/// Where a connector's chain stands: the next sequence number and the hash of the last
/// record (32 zero bytes before seq 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    pub next_seq: i64,
    pub head: [u8; 32],
}

impl Chain {
    pub const GENESIS: Chain = Chain {
        next_seq: 1,
        head: [0u8; 32],
    };
}

/// What identifies a batch and is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMeta {
    pub agent: String,
    pub connector: String,
    pub record_type: String,
    pub first_seq: i64,
    pub last_seq: i64,
    pub count: i64,
    pub prev_hash: String,
    pub head_hash: String,
    /// Ed25519 signature, base64.
    pub signature: String,
    pub compression: Compression,
    /// RFC 3339, when the batch was built.
    pub created_at: String,
    /// 6-digit region for the routing key.
    pub region6: String,
}

impl BatchMeta {
    pub fn message_id(&self) -> String {
        format!("{}/{}/{}", self.agent, self.connector, self.first_seq)
    }

    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.record_type, self.region6)
    }

    pub fn content_encoding(&self) -> Option<&'static str> {
        match self.compression {
            Compression::Gzip => Some("gzip"),
            Compression::None => None,
        }
    }

    /// The AMQP headers of the contract (also written into the dir sink's manifest).
    pub fn headers(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut h = serde_json::Map::new();
        h.insert("fep-schema".into(), SCHEMA.into());
        h.insert("fep-agent".into(), self.agent.clone().into());
        h.insert("fep-connector".into(), self.connector.clone().into());
        h.insert("fep-record-type".into(), self.record_type.clone().into());
        h.insert("fep-first-seq".into(), self.first_seq.into());
        h.insert("fep-last-seq".into(), self.last_seq.into());
        h.insert("fep-count".into(), self.count.into());
        h.insert("fep-prev-hash".into(), self.prev_hash.clone().into());
        h.insert("fep-head-hash".into(), self.head_hash.clone().into());
        h.insert("fep-signature".into(), self.signature.clone().into());
        h
    }
}

/// The signed text: `agent|connector|first_seq|last_seq|prev_hash|head_hash`.
pub fn signing_payload(
    agent: &str,
    connector: &str,
    first: i64,
    last: i64,
    prev_hex: &str,
    head_hex: &str,
) -> String {
    format!("{agent}|{connector}|{first}|{last}|{prev_hex}|{head_hex}")
}

/// A built batch: its metadata and its body (in wire encoding once compressed).
pub struct BuiltBatch {
    pub meta: BatchMeta,
    pub body: Vec<u8>,
    /// Whether `body` is in its wire encoding yet.
    pub compressed: bool,
    /// The chain after this batch.
    pub chain: Chain,
}

/// Builds batches of one connector: assigns sequence numbers, chains hashes, compresses,
/// signs.
pub struct BatchBuilder {
    pub agent: String,
    pub connector: String,
    pub record_type: String,
    pub region6: String,
    pub compression: Compression,
    pub key: SigningKey,
}

impl BatchBuilder {
    /// Builds one batch from `records`, continuing `chain`. `collected_at` is stamped on
    /// every line of the batch.
    pub fn build(
        &self,
        chain: Chain,
        records: &[LineInput<'_>],
        collected_at: &DateTime<FixedOffset>,
    ) -> std::io::Result<BuiltBatch> {
        self.build_plain(chain, records, collected_at)?.compress()
    }

    /// [`build`](Self::build) without the compression, which the caller may run on another
    /// thread ([`BuiltBatch::compress`]).
    pub fn build_plain(
        &self,
        chain: Chain,
        records: &[LineInput<'_>],
        collected_at: &DateTime<FixedOffset>,
    ) -> std::io::Result<BuiltBatch> {
        let collected = collected_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        let mut plain = Vec::with_capacity(records.len() * 400);
        let mut canon = Vec::with_capacity(512);
        let mut head = chain.head;
        let mut seq = chain.next_seq;
        for r in records {
            let (op, content) = match r.data {
                Some(_) => (Op::Upsert, r.content_hash_hex),
                None => (Op::Delete, "deleted"),
            };
            let id = record_id(
                &self.agent,
                &self.connector,
                &self.record_type,
                r.source_key,
                content,
            );
            // canonical = prefix + suffix; wire = prefix + ,"hash":"…" + suffix
            canon.clear();
            canon.extend_from_slice(b"{\"collected_at\":");
            write_json_str(&mut canon, &collected);
            canon.extend_from_slice(b",\"data\":");
            match r.data {
                Some(d) => canon.extend_from_slice(d),
                None => canon.extend_from_slice(b"null"),
            }
            let split = canon.len();
            canon.extend_from_slice(b",\"id\":\"");
            canon.extend_from_slice(id.as_bytes());
            canon.extend_from_slice(b"\",\"op\":\"");
            canon.extend_from_slice(op.as_str().as_bytes());
            canon.extend_from_slice(b"\",\"seq\":");
            canon.extend_from_slice(seq.to_string().as_bytes());
            canon.extend_from_slice(b",\"source_key\":");
            write_json_str(&mut canon, r.source_key);
            canon.extend_from_slice(b",\"type\":");
            write_json_str(&mut canon, &self.record_type);
            canon.push(b'}');

            let mut h = Sha256::new();
            h.update(head);
            h.update(&canon);
            head = h.finalize().into();

            plain.extend_from_slice(&canon[..split]);
            plain.extend_from_slice(b",\"hash\":\"");
            plain.extend_from_slice(hex::encode(head).as_bytes());
            plain.push(b'"');
            plain.extend_from_slice(&canon[split..]);
            plain.push(b'\n');
            seq += 1;
        }
        let first_seq = chain.next_seq;
        let last_seq = seq - 1;
        let prev_hash = hex::encode(chain.head);
        let head_hash = hex::encode(head);
        let payload = signing_payload(
            &self.agent,
            &self.connector,
            first_seq,
            last_seq,
            &prev_hash,
            &head_hash,
        );
        let signature = base64::engine::general_purpose::STANDARD
            .encode(self.key.sign(payload.as_bytes()).to_bytes());
        Ok(BuiltBatch {
            compressed: false,
            meta: BatchMeta {
                agent: self.agent.clone(),
                connector: self.connector.clone(),
                record_type: self.record_type.clone(),
                first_seq,
                last_seq,
                count: records.len() as i64,
                prev_hash,
                head_hash,
                signature,
                compression: self.compression,
                created_at: collected_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
                region6: self.region6.clone(),
            },
            body: plain,
            chain: Chain {
                next_seq: seq,
                head,
            },
        })
    }
}

impl BuiltBatch {
    /// Puts the body in its wire encoding (gzip unless the batch says `none`).
    pub fn compress(mut self) -> std::io::Result<BuiltBatch> {
        if !self.compressed {
            if self.meta.compression == Compression::Gzip {
                self.body = gzip(&self.body)?;
            }
            self.compressed = true;
        }
        Ok(self)
    }
}

/// Gzip at a fast level: batches are small and compressed once, on the extraction path.
pub fn gzip(plain: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(plain.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(plain)?;
    enc.finish()
}

/// Decompresses a batch body if it is gzip (by its magic bytes).
pub fn decode_body(body: &[u8]) -> std::io::Result<Vec<u8>> {
    if body.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(body.len() * 4);
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(body), &mut out)?;
        Ok(out)
    } else {
        Ok(body.to_vec())
    }
}

impl BatchMeta {
    /// Reads the metadata back from a dir-sink manifest (for `fepd relay`).
    pub fn from_manifest(m: &serde_json::Value) -> Result<BatchMeta, String> {
        let h = m["headers"]
            .as_object()
            .ok_or("the manifest has no headers")?;
        let s = |k: &str| {
            h.get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("header {k} missing"))
        };
        let n = |k: &str| {
            h.get(k)
                .and_then(|v| v.as_i64())
                .ok_or_else(|| format!("header {k} missing or not an integer"))
        };
        if s("fep-schema")? != SCHEMA {
            return Err(format!("fep-schema is not {SCHEMA}"));
        }
        let routing_key = m["routing_key"].as_str().ok_or("routing_key missing")?;
        let region6 = routing_key
            .rsplit_once('.')
            .map(|(_, r)| r.to_string())
            .ok_or("routing_key is not <record_type>.<region6>")?;
        let compression = match m["properties"]["content_encoding"].as_str() {
            Some("gzip") => Compression::Gzip,
            None => Compression::None,
            Some(other) => return Err(format!("unknown content_encoding {other}")),
        };
        let created_at = m["properties"]["timestamp"]
            .as_i64()
            .and_then(|t| DateTime::from_timestamp(t, 0))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        Ok(BatchMeta {
            agent: s("fep-agent")?,
            connector: s("fep-connector")?,
            record_type: s("fep-record-type")?,
            first_seq: n("fep-first-seq")?,
            last_seq: n("fep-last-seq")?,
            count: n("fep-count")?,
            prev_hash: s("fep-prev-hash")?,
            head_hash: s("fep-head-hash")?,
            signature: s("fep-signature")?,
            compression,
            created_at,
            region6,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_line_is_canonical_and_hash_chains() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let b = BatchBuilder {
            agent: "a".into(),
            connector: "c".into(),
            record_type: "individual_subsidy".into(),
            region6: "430124".into(),
            compression: Compression::None,
            key: key.clone(),
        };
        let at = DateTime::parse_from_rfc3339("2026-12-04T10:00:00+08:00").unwrap();
        let recs = [
            LineInput {
                source_key: "k1",
                data: Some(br#"{"amount":"1.00"}"#),
                content_hash_hex: "00",
            },
            LineInput {
                source_key: "k\"2",
                data: None,
                content_hash_hex: "",
            },
        ];
        let built = b.build(Chain::GENESIS, &recs, &at).unwrap();
        assert_eq!(built.meta.first_seq, 1);
        assert_eq!(built.meta.last_seq, 2);
        assert_eq!(built.chain.next_seq, 3);
        let text = String::from_utf8(built.body).unwrap();
        let mut prev = [0u8; 32];
        for line in text.lines() {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            // the line re-serialised (sorted keys) is byte-identical
            assert_eq!(serde_json::to_string(&v).unwrap(), line);
            let hash = v.as_object_mut().unwrap().remove("hash").unwrap();
            let canon = serde_json::to_vec(&v).unwrap();
            let mut h = Sha256::new();
            h.update(prev);
            h.update(&canon);
            let computed: [u8; 32] = h.finalize().into();
            assert_eq!(hash.as_str().unwrap(), hex::encode(computed));
            prev = computed;
        }
        assert!(text.contains(r#""data":null"#) && text.contains(r#""op":"delete""#));
        assert_eq!(hex::encode(prev), built.meta.head_hash);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(text.lines().nth(1).unwrap()).unwrap()["id"],
            record_id("a", "c", "individual_subsidy", "k\"2", "deleted")
        );
    }
}
