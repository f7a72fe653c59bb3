//! The reject store: every row that failed mapping or validation, with its raw values and
//! every reason, kept in the spool so departments can see — row by row — what was refused
//! and why. The same bad version of a row is stored once (re-reads only bump
//! `occurrences`); a changed bad version is a new entry.

use sha2::{Digest, Sha256};
use sqlx::{Row as _, Sqlite, Transaction};

use super::{Spool, SpoolError};
use crate::mapping::{Reason, Rejected};

/// A stored reject.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredReject {
    pub id: i64,
    pub connector: String,
    pub source_key: String,
    pub raw: serde_json::Value,
    pub reasons: Vec<Reason>,
    pub first_seen: String,
    pub last_seen: String,
    pub occurrences: i64,
}

/// Which rejects to list.
#[derive(Debug, Clone, Default)]
pub struct RejectFilter {
    pub connector: Option<String>,
    /// Only rejects whose reasons include this rule (e.g. `idcard.check_char`).
    pub rule: Option<String>,
    /// Only rejects with a higher id (for reject reports).
    pub after_id: Option<i64>,
    /// Only rejects with this id or a lower one (to re-send a report unchanged).
    pub up_to_id: Option<i64>,
    pub limit: Option<i64>,
}

pub(super) async fn insert(
    tx: &mut Transaction<'static, Sqlite>,
    connector: &str,
    r: &Rejected,
    now: &str,
) -> Result<(), sqlx::Error> {
    let raw = r.raw.to_string();
    let raw_hash = hex::encode(Sha256::digest(raw.as_bytes()));
    let reasons = serde_json::to_string(&r.reasons).unwrap_or_else(|_| "[]".into());
    sqlx::query(
        "INSERT INTO rejects (connector, source_key, raw_hash, raw, reasons, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) \
         ON CONFLICT (connector, source_key, raw_hash) DO UPDATE SET last_seen = excluded.last_seen, occurrences = occurrences + 1",
    )
    .bind(connector)
    .bind(&r.source_key)
    .bind(raw_hash)
    .bind(raw)
    .bind(reasons)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Spool {
    /// Rejects matching the filter, oldest first.
    pub async fn rejects(&self, filter: &RejectFilter) -> Result<Vec<StoredReject>, SpoolError> {
        let rows = sqlx::query(
            "SELECT id, connector, source_key, raw, reasons, first_seen, last_seen, occurrences FROM rejects \
             WHERE (?1 IS NULL OR connector = ?1) \
               AND (?2 IS NULL OR EXISTS (SELECT 1 FROM json_each(rejects.reasons) WHERE json_extract(value, '$.rule') = ?2)) \
               AND id > ?4 AND id <= ?5 \
             ORDER BY id LIMIT ?3",
        )
        .bind(filter.connector.as_deref())
        .bind(filter.rule.as_deref())
        .bind(filter.limit.unwrap_or(i64::MAX))
        .bind(filter.after_id.unwrap_or(0))
        .bind(filter.up_to_id.unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await
        .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|r| {
                let raw: String = r.get(3);
                let reasons: String = r.get(4);
                Ok(StoredReject {
                    id: r.get(0),
                    connector: r.get(1),
                    source_key: r.get(2),
                    raw: serde_json::from_str(&raw)
                        .map_err(|e| self.corrupt(format!("reject raw row: {e}")))?,
                    reasons: serde_json::from_str(&reasons)
                        .map_err(|e| self.corrupt(format!("reject reasons: {e}")))?,
                    first_seen: r.get(5),
                    last_seen: r.get(6),
                    occurrences: r.get(7),
                })
            })
            .collect()
    }

    /// Count of stored rejects per `(connector, field: rule)`, most frequent first.
    pub async fn reject_summary(
        &self,
        since_id: i64,
    ) -> Result<Vec<(String, String, i64)>, SpoolError> {
        let rows = sqlx::query(
            "SELECT connector, json_extract(value, '$.field') || ': ' || json_extract(value, '$.rule') AS reason, COUNT(*) \
             FROM rejects, json_each(rejects.reasons) WHERE rejects.id > ?1 GROUP BY connector, reason ORDER BY 3 DESC, 1, 2",
        )
        .bind(since_id)
        .fetch_all(self.pool())
        .await
        .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// The highest reject id so far (to summarise only a pass's new rejects).
    pub async fn max_reject_id(&self) -> Result<i64, SpoolError> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) FROM rejects")
            .fetch_one(self.pool())
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }
}
