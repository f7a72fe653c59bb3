//! The cursor engine: what a connector selects, where a pass starts, and how the cursor
//! advances — shared by every SQL driver.
//!
//! Modes (see design.md):
//! - `incrementing`: `WHERE col > :last ORDER BY col`.
//! - `timestamp`: `WHERE ts >= :last_ts - lag ORDER BY ts, key`. Rows re-read inside the lag
//!   window are suppressed later by their content hash, so a transaction that commits late
//!   is still caught and nothing is delivered twice.
//! - `snapshot`: `ORDER BY key` full scan (resumable with `WHERE key > :after`), diffed
//!   against stored row hashes; keys not seen in a completed scan become deletes.
//!
//! Cursor values are bound back in the type the database returned them in, so comparisons
//! happen at the database's own precision: never truncated, never shifted.

use chrono::{DateTime, Duration as ChronoDuration, FixedOffset, NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};

use super::{Dialect, SelectQuery};
use crate::config::{ConnectorConfig, CursorMode, FieldSource, Relation};
use crate::value::Value;

/// A cursor position value, stored in the spool as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum CursorValue {
    Int(i64),
    Text(String),
    /// Exact decimal text.
    Decimal(String),
    Date(NaiveDate),
    DateTime(NaiveDateTime),
    DateTimeTz(DateTime<FixedOffset>),
}

impl CursorValue {
    /// The cursor value of a cell; `None` for NULL and for types that cannot order rows.
    pub fn from_value(v: &Value) -> Option<CursorValue> {
        Some(match v {
            Value::Int(i) => CursorValue::Int(*i),
            Value::Text(s) => CursorValue::Text(s.clone()),
            Value::Decimal(d) => CursorValue::Decimal(d.to_string()),
            Value::Date(d) => CursorValue::Date(*d),
            Value::DateTime(d) => CursorValue::DateTime(*d),
            Value::DateTimeTz(d) => CursorValue::DateTimeTz(*d),
            Value::Float(f) => CursorValue::Decimal(format!("{f}")),
            // Undecoded text (a connector with a legacy `encoding`): ASCII timestamps and
            // codes are still usable cursors; other bytes cannot be bound back faithfully.
            Value::Bytes(b) => CursorValue::Text(std::str::from_utf8(b).ok()?.to_string()),
            Value::Null | Value::Bool(_) => return None,
        })
    }

    /// The value to bind.
    pub fn to_value(&self) -> Value {
        match self {
            CursorValue::Int(i) => Value::Int(*i),
            CursorValue::Text(s) => Value::Text(s.clone()),
            CursorValue::Decimal(s) => match rust_decimal::Decimal::from_str_exact(s) {
                Ok(d) => Value::Decimal(d),
                Err(_) => Value::Text(s.clone()),
            },
            CursorValue::Date(d) => Value::Date(*d),
            CursorValue::DateTime(d) => Value::DateTime(*d),
            CursorValue::DateTimeTz(d) => Value::DateTimeTz(*d),
        }
    }

    /// The value moved back by `lag`, in the same representation. Text timestamps (common in
    /// SQLite) are parsed and re-written in their own layout so the database still compares
    /// like with like.
    pub fn minus(&self, lag: std::time::Duration) -> CursorValue {
        let Ok(lag) = ChronoDuration::from_std(lag) else {
            return self.clone();
        };
        match self {
            CursorValue::DateTime(d) => {
                CursorValue::DateTime(d.checked_sub_signed(lag).unwrap_or(*d))
            }
            CursorValue::DateTimeTz(d) => {
                CursorValue::DateTimeTz(d.checked_sub_signed(lag).unwrap_or(*d))
            }
            CursorValue::Date(d) => {
                let days = lag.num_days() + i64::from(lag.num_seconds() % 86400 != 0);
                CursorValue::Date(
                    d.checked_sub_signed(ChronoDuration::days(days))
                        .unwrap_or(*d),
                )
            }
            CursorValue::Int(i) => {
                // Integer timestamps: Unix seconds, or milliseconds when that large.
                let lag_units = if i.unsigned_abs() >= 100_000_000_000 {
                    lag.num_milliseconds()
                } else {
                    lag.num_seconds()
                };
                CursorValue::Int(i.saturating_sub(lag_units))
            }
            CursorValue::Text(s) => match shift_text_timestamp(s, lag) {
                Some(t) => CursorValue::Text(t),
                None => self.clone(),
            },
            CursorValue::Decimal(_) => self.clone(),
        }
    }

    /// Orders two values of the same kind as the database would; `None` when they are of
    /// different kinds (callers then take the safe side).
    pub fn compare(&self, other: &CursorValue) -> Option<std::cmp::Ordering> {
        use CursorValue as C;
        match (self, other) {
            (C::Int(a), C::Int(b)) => Some(a.cmp(b)),
            (C::Text(a), C::Text(b)) => Some(a.cmp(b)),
            (C::Date(a), C::Date(b)) => Some(a.cmp(b)),
            (C::DateTime(a), C::DateTime(b)) => Some(a.cmp(b)),
            (C::DateTimeTz(a), C::DateTimeTz(b)) => Some(a.cmp(b)),
            (C::Decimal(a), C::Decimal(b)) => {
                let (a, b) = (
                    rust_decimal::Decimal::from_str_exact(a).ok()?,
                    rust_decimal::Decimal::from_str_exact(b).ok()?,
                );
                Some(a.cmp(&b))
            }
            _ => None,
        }
    }

    /// Short human form, for status and progress lines.
    pub fn display(&self) -> String {
        match self {
            CursorValue::Int(i) => i.to_string(),
            CursorValue::Text(s) | CursorValue::Decimal(s) => s.clone(),
            CursorValue::Date(d) => d.to_string(),
            CursorValue::DateTime(d) => d.to_string(),
            CursorValue::DateTimeTz(d) => d.to_rfc3339(),
        }
    }
}

/// Shifts a text timestamp such as `2024-05-01 10:00:00.123` back by `lag`, keeping its
/// layout (separator and fraction digits). `None` if the text is not a timestamp.
fn shift_text_timestamp(s: &str, lag: ChronoDuration) -> Option<String> {
    let sep = if s.as_bytes().get(10) == Some(&b'T') {
        'T'
    } else {
        ' '
    };
    let frac_digits = s.find('.').map(|p| s.len() - p - 1).unwrap_or(0);
    let parsed = if s.len() == 10 {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()?
            .and_hms_opt(0, 0, 0)?
    } else {
        NaiveDateTime::parse_from_str(s, &format!("%Y-%m-%d{sep}%H:%M:%S%.f")).ok()?
    };
    let shifted = parsed.checked_sub_signed(lag)?;
    let mut out = shifted
        .format(&format!("%Y-%m-%d{sep}%H:%M:%S"))
        .to_string();
    if frac_digits > 0 {
        let nanos = format!("{:09}", shifted.and_utc().timestamp_subsec_nanos());
        out.push('.');
        out.push_str(&nanos[..frac_digits.min(9)]);
    }
    Some(out)
}

/// Where a connector stands, stored in the spool with every commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum CursorState {
    Incrementing {
        last: CursorValue,
    },
    Timestamp {
        ts: CursorValue,
        key: Vec<CursorValue>,
    },
    Snapshot {
        generation: i64,
        phase: SnapshotPhase,
        after_key: Option<Vec<CursorValue>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotPhase {
    /// Scanning the table; `after_key` is the last key committed.
    Scan,
    /// The scan completed; keys not seen in it are being emitted as deletes.
    Deletes,
    /// The pass completed.
    Done,
}

impl CursorState {
    /// Human summary for `status`.
    pub fn display(&self) -> String {
        match self {
            CursorState::Incrementing { last } => format!("after {}", last.display()),
            CursorState::Timestamp { ts, .. } => format!("at {}", ts.display()),
            CursorState::Snapshot {
                generation, phase, ..
            } => format!("snapshot #{generation} {phase:?}").to_lowercase(),
        }
    }
}

/// One item of the select list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectItem {
    Column(String),
    Expr(String),
}

/// The select list of a connector and where things are in a row.
#[derive(Debug, Clone)]
pub struct Layout {
    pub items: Vec<SelectItem>,
    /// Indexes of the key columns, in key order.
    pub key: Vec<usize>,
    /// Index of the cursor column (incrementing/timestamp).
    pub cursor: Option<usize>,
}

impl Layout {
    /// Key columns first, then the cursor column, then every mapped column or expression,
    /// each selected once.
    pub fn for_connector(c: &ConnectorConfig) -> Layout {
        let mut items: Vec<SelectItem> = Vec::new();
        let add = |item: SelectItem, items: &mut Vec<SelectItem>| -> usize {
            if let Some(i) = items.iter().position(|x| *x == item) {
                i
            } else {
                items.push(item);
                items.len() - 1
            }
        };
        let key = c
            .extract
            .key
            .iter()
            .map(|k| add(SelectItem::Column(k.clone()), &mut items))
            .collect();
        let cursor = match &c.extract.mode {
            CursorMode::Incrementing { column } | CursorMode::Timestamp { column, .. } => {
                Some(add(SelectItem::Column(column.clone()), &mut items))
            }
            CursorMode::Snapshot => None,
        };
        for f in &c.fields {
            match &f.source {
                FieldSource::Column(col) => {
                    add(SelectItem::Column(col.clone()), &mut items);
                }
                FieldSource::Expr(e) => {
                    add(SelectItem::Expr(e.clone()), &mut items);
                }
                FieldSource::Const(_) => {}
            }
        }
        Layout { items, key, cursor }
    }

    pub fn index_of(&self, item: &SelectItem) -> Option<usize> {
        self.items.iter().position(|x| x == item)
    }

    /// Names of the selected items, for raw rows in reject records.
    pub fn names(&self) -> Vec<String> {
        self.items
            .iter()
            .map(|i| match i {
                SelectItem::Column(c) => c.clone(),
                SelectItem::Expr(e) => e.clone(),
            })
            .collect()
    }
}

/// Builds the SQL for one pass (or a preview with `limit`) from the connector, its layout
/// and the position to start from.
pub fn build_query(
    dialect: &dyn Dialect,
    c: &ConnectorConfig,
    layout: &Layout,
    start: &Start,
    limit: Option<usize>,
) -> SelectQuery {
    let mut binds: Vec<Value> = Vec::new();
    let bind = |v: Value, binds: &mut Vec<Value>| -> String {
        binds.push(v);
        dialect.placeholder(binds.len())
    };
    let select: Vec<String> = layout
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            SelectItem::Column(col) => dialect.quote_ident(col),
            SelectItem::Expr(e) => format!(
                "({e}) AS {}",
                dialect.quote_ident(&format!("fepd_expr_{i}"))
            ),
        })
        .collect();
    let from = match &c.extract.relation {
        Relation::Table(t) => dialect.quote_path(t),
        Relation::Query(q) => format!("({q}) fepd_src"),
    };
    let keys: Vec<String> = c
        .extract
        .key
        .iter()
        .map(|k| dialect.quote_ident(k))
        .collect();
    let mut conditions: Vec<String> = Vec::new();
    let order: Vec<String> = match &c.extract.mode {
        CursorMode::Incrementing { column } => {
            let col = dialect.quote_ident(column);
            match start {
                Start::After(v) => {
                    conditions.push(format!("{col} > {}", bind(v.to_value(), &mut binds)))
                }
                Start::AtOrAfter(v) => {
                    conditions.push(format!("{col} >= {}", bind(v.to_value(), &mut binds)))
                }
                _ => {}
            }
            vec![col]
        }
        CursorMode::Timestamp { column, .. } => {
            let col = dialect.quote_ident(column);
            match start {
                Start::AtOrAfter(v) | Start::After(v) => {
                    conditions.push(format!("{col} >= {}", bind(v.to_value(), &mut binds)))
                }
                _ => {}
            }
            std::iter::once(col).chain(keys.iter().cloned()).collect()
        }
        CursorMode::Snapshot => {
            if let Start::AfterKey(after) = start {
                // (k1 > a1) OR (k1 = a1 AND k2 > a2) OR … — row-value comparison spelled
                // out, because SQL Server and older engines lack `(a, b) > (x, y)`.
                let mut ors = Vec::new();
                for i in 0..keys.len().min(after.len()) {
                    let mut ands = Vec::new();
                    for j in 0..i {
                        ands.push(format!(
                            "{} = {}",
                            keys[j],
                            bind(after[j].to_value(), &mut binds)
                        ));
                    }
                    ands.push(format!(
                        "{} > {}",
                        keys[i],
                        bind(after[i].to_value(), &mut binds)
                    ));
                    ors.push(format!("({})", ands.join(" AND ")));
                }
                if !ors.is_empty() {
                    conditions.push(ors.join(" OR "));
                }
            }
            keys.clone()
        }
    };
    let mut sql = format!("SELECT {} FROM {from}", select.join(", "));
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(" ORDER BY ");
    sql.push_str(&order.join(", "));
    if let Some(n) = limit {
        sql = dialect.limit(&sql, n);
    }
    SelectQuery { sql, binds }
}

/// Where a pass starts reading.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// From the beginning of the table.
    Beginning,
    /// Rows with cursor value `>=` this (timestamp lag windows, `start_from`).
    AtOrAfter(CursorValue),
    /// Rows with cursor value `>` this (incrementing).
    After(CursorValue),
    /// Snapshot resume: rows whose key is after this one.
    AfterKey(Vec<CursorValue>),
}

/// The first position of a pass, from the stored state and the connector's settings.
pub fn start_of_pass(c: &ConnectorConfig, state: Option<&CursorState>) -> Start {
    let start_from = c
        .extract
        .start_from
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(CursorValue::DateTime);
    match (&c.extract.mode, state) {
        (CursorMode::Incrementing { .. }, Some(CursorState::Incrementing { last })) => {
            Start::After(last.clone())
        }
        (CursorMode::Timestamp { lag, .. }, Some(CursorState::Timestamp { ts, .. })) => {
            Start::AtOrAfter(ts.minus(*lag))
        }
        (
            CursorMode::Snapshot,
            Some(CursorState::Snapshot {
                phase: SnapshotPhase::Scan,
                after_key: Some(k),
                ..
            }),
        ) => Start::AfterKey(k.clone()),
        (CursorMode::Snapshot, _) => Start::Beginning,
        (_, _) => match start_from {
            Some(v) => Start::AtOrAfter(v),
            None => Start::Beginning,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_timestamps_shift_in_their_own_layout() {
        let lag = ChronoDuration::minutes(5);
        assert_eq!(
            shift_text_timestamp("2024-05-01 10:00:00", lag).unwrap(),
            "2024-05-01 09:55:00"
        );
        assert_eq!(
            shift_text_timestamp("2024-05-01T00:02:00.123", lag).unwrap(),
            "2024-04-30T23:57:00.123"
        );
        assert_eq!(
            shift_text_timestamp("2024-05-01", lag).unwrap(),
            "2024-04-30 23:55:00"
        );
        assert!(shift_text_timestamp("yesterday", lag).is_none());
    }

    #[test]
    fn cursor_values_round_trip_through_json() {
        let states = vec![
            CursorState::Incrementing {
                last: CursorValue::Int(42),
            },
            CursorState::Timestamp {
                ts: CursorValue::DateTime(
                    NaiveDate::from_ymd_opt(2024, 1, 2)
                        .unwrap()
                        .and_hms_micro_opt(3, 4, 5, 123456)
                        .unwrap(),
                ),
                key: vec![CursorValue::Text("k".into())],
            },
            CursorState::Snapshot {
                generation: 3,
                phase: SnapshotPhase::Scan,
                after_key: Some(vec![CursorValue::Decimal("12.5".into())]),
            },
        ];
        for s in states {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(
                serde_json::from_str::<CursorState>(&json).unwrap(),
                s,
                "{json}"
            );
        }
    }

    #[test]
    fn datetime_minus_lag_keeps_microseconds() {
        let d = NaiveDate::from_ymd_opt(2024, 1, 1)
            .unwrap()
            .and_hms_micro_opt(0, 0, 1, 999_999)
            .unwrap();
        let shifted = CursorValue::DateTime(d).minus(std::time::Duration::from_secs(2));
        assert_eq!(
            shifted,
            CursorValue::DateTime(
                NaiveDate::from_ymd_opt(2023, 12, 31)
                    .unwrap()
                    .and_hms_micro_opt(23, 59, 59, 999_999)
                    .unwrap()
            )
        );
    }
}
