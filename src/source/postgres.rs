//! The `postgres` driver: PostgreSQL and the databases that speak its protocol
//! (KingbaseES, openGauss, …), through sqlx with rustls.
//!
//! Every cell is decoded by its column type into an exact [`Value`]: NUMERIC from its
//! binary form digit by digit (up to 1000 digits, never via f64), TIMESTAMP at microsecond
//! precision in the source's time zone, TIMESTAMPTZ as an instant, CHAR(n) without its
//! padding. The session's `TimeZone` is the connector's `time_zone`, so comparisons between
//! TIMESTAMP and TIMESTAMPTZ happen in the source's zone.

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow, PgSslMode, PgValueRef};
use sqlx::{AssertSqlSafe, Decode, Postgres, Row as _, TypeInfo as _, ValueRef as _};

use super::{Dialect, Row, RowStream, SelectQuery, SourceDriver, SourceError};
use crate::config::{NetSource, TlsMode};
use crate::value::Value;

pub struct PostgresDialect;

impl Dialect for PostgresDialect {
    fn quote_ident(&self, part: &str) -> String {
        format!("\"{}\"", part.replace('"', "\"\""))
    }

    fn placeholder(&self, n: usize) -> String {
        format!("${n}")
    }
}

pub struct PostgresSource {
    connector: String,
    pool: PgPool,
    raw_text: bool,
}

/// Connection errors worth retrying (the server is down, restarting, or unreachable).
pub(super) fn sqlx_retryable(e: &sqlx::Error) -> bool {
    match e {
        // A certificate or protocol problem will not go away by itself.
        sqlx::Error::Io(io) => {
            let text = io.to_string().to_lowercase();
            !(matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::PermissionDenied
            ) || text.contains("certificate")
                || text.contains("handshake"))
        }
        sqlx::Error::Tls(_) => false,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            // 08xxx connection exceptions, 57P0x operator intervention (shutdown, restart),
            // 53xxx insufficient resources, 40001/40P01 serialisation failure and deadlock.
            d.code().is_some_and(|c| {
                c.starts_with("08")
                    || c.starts_with("57P0")
                    || c.starts_with("53")
                    || c == "40001"
                    || c == "40P01"
            })
        }
        _ => false,
    }
}

impl PostgresSource {
    pub async fn open(
        connector: &str,
        net: &NetSource,
        time_zone: &str,
        query_timeout: Option<std::time::Duration>,
        raw_text: bool,
    ) -> Result<PostgresSource, SourceError> {
        let mut options = PgConnectOptions::new_without_pgpass()
            .host(&net.host)
            .port(net.port)
            .database(&net.database)
            .username(&net.user)
            .application_name("fepd")
            .ssl_mode(match net.tls {
                TlsMode::Disable => PgSslMode::Disable,
                TlsMode::Prefer => PgSslMode::Prefer,
                TlsMode::Require if net.ca_file.is_some() => PgSslMode::VerifyCa,
                TlsMode::Require => PgSslMode::Require,
                TlsMode::VerifyFull => PgSslMode::VerifyFull,
            });
        if let Some(ca) = &net.ca_file {
            options = options.ssl_root_cert(ca);
        }
        if let Some(pw) = &net.password {
            let pw = pw.expose_str().map_err(|_| SourceError::Connect {
                connector: connector.to_string(),
                message: "the password is not valid UTF-8".into(),
                retryable: false,
            })?;
            options = options.password(pw);
        }
        let timeout_ms = query_timeout
            .map(|d| d.as_millis().to_string())
            .unwrap_or_else(|| "0".into());
        options = options.options([
            ("TimeZone", time_zone.to_string()),
            ("statement_timeout", timeout_ms),
            // A connector only reads; make the server enforce it as well.
            ("default_transaction_read_only", "on".to_string()),
        ]);
        let options = sqlx::ConnectOptions::disable_statement_logging(options);
        // One connection: at most one query at a time against the source.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(net.connect_timeout)
            .connect_with(options)
            .await
            .map_err(|e| SourceError::Connect {
                connector: connector.to_string(),
                message: format!("postgres {}: {e}", net.describe()),
                retryable: sqlx_retryable(&e),
            })?;
        Ok(PostgresSource {
            connector: connector.to_string(),
            pool,
            raw_text,
        })
    }

    fn query_error(&self, e: sqlx::Error) -> SourceError {
        SourceError::Query {
            connector: self.connector.clone(),
            retryable: sqlx_retryable(&e),
            message: e.to_string(),
        }
    }

    fn decode(&self, row: &PgRow) -> Result<Row, SourceError> {
        super::decode_sqlx_row(&self.connector, row, self.raw_text, decode_cell)
    }
}

fn dec<'r, T: Decode<'r, Postgres>>(v: PgValueRef<'r>) -> Result<T, String> {
    T::decode(v).map_err(|e| e.to_string())
}

/// The types `decode_cell` handles by name.
const PG_TYPES: &[&str] = &[
    "BOOL",
    "INT2",
    "INT4",
    "INT8",
    "OID",
    "FLOAT4",
    "FLOAT8",
    "NUMERIC",
    "DATE",
    "TIMESTAMP",
    "TIMESTAMPTZ",
    "BYTEA",
    "BPCHAR",
    "CHAR",
    "TEXT",
    "VARCHAR",
    "NAME",
    "CITEXT",
    "UNKNOWN",
    "UUID",
    "JSON",
    "JSONB",
];

fn decode_cell(v: PgValueRef<'_>, raw_text: bool) -> Result<Value, String> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    Ok(
        match super::known_type(v.type_info().name(), PG_TYPES).unwrap_or_default() {
            "BOOL" => Value::Bool(dec(v)?),
            "INT2" => Value::Int(i64::from(dec::<i16>(v)?)),
            "INT4" => Value::Int(i64::from(dec::<i32>(v)?)),
            "INT8" => Value::Int(dec(v)?),
            "OID" => Value::Int(i64::from(dec::<sqlx::postgres::types::Oid>(v)?.0)),
            "FLOAT4" => Value::Float(f64::from(dec::<f32>(v)?)),
            "FLOAT8" => Value::Float(dec(v)?),
            "NUMERIC" => {
                let text = numeric_text(v.as_bytes().map_err(|e| e.to_string())?)?;
                match rust_decimal::Decimal::from_str_exact(&text) {
                    Ok(d) => Value::Decimal(d),
                    // More digits than rust_decimal holds (its `parse` would round!): keep the exact text.
                    Err(_) => Value::Text(text),
                }
            }
            "DATE" => Value::Date(dec(v)?),
            "TIMESTAMP" => Value::DateTime(dec(v)?),
            "TIMESTAMPTZ" => {
                Value::DateTimeTz(dec::<chrono::DateTime<chrono::Utc>>(v)?.fixed_offset())
            }
            "BYTEA" => Value::Bytes(dec(v)?),
            "BPCHAR" | "CHAR" => text_value(v, raw_text, true)?,
            "TEXT" | "VARCHAR" | "NAME" | "CITEXT" | "UNKNOWN" => text_value(v, raw_text, false)?,
            "UUID" => {
                let b = v.as_bytes().map_err(|e| e.to_string())?;
                let h = hex::encode(b);
                if h.len() != 32 {
                    return Err("malformed UUID".into());
                }
                Value::Text(format!(
                    "{}-{}-{}-{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                ))
            }
            "JSON" | "JSONB" => {
                Value::Text(raw_utf8(v).map(|s| s.trim_start_matches('\u{1}').to_string())?)
            }
            _ => match v.format() {
                sqlx::postgres::PgValueFormat::Text => Value::Text(raw_utf8(v)?),
                sqlx::postgres::PgValueFormat::Binary => {
                    return Err(format!(
                        "type {} is not supported; cast it in the query, e.g. `col::text`",
                        v.type_info().name()
                    ));
                }
            },
        },
    )
}

fn raw_utf8(v: PgValueRef<'_>) -> Result<String, String> {
    let b = v.as_bytes().map_err(|e| e.to_string())?;
    String::from_utf8(b.to_vec()).map_err(|e| e.to_string())
}

fn text_value(v: PgValueRef<'_>, raw_text: bool, padded: bool) -> Result<Value, String> {
    let bytes = v.as_bytes().map_err(|e| e.to_string())?;
    // CHAR(n) is blank-padded by the server; the padding is not data.
    let bytes = if padded {
        bytes.trim_ascii_end()
    } else {
        bytes
    };
    if raw_text {
        return Ok(Value::Bytes(bytes.to_vec()));
    }
    Ok(match std::str::from_utf8(bytes) {
        Ok(s) => Value::Text(s.to_string()),
        Err(_) => Value::Bytes(bytes.to_vec()),
    })
}

/// The exact decimal text of a NUMERIC in PostgreSQL's binary format: `ndigits`, `weight`,
/// `sign`, `dscale`, then base-10000 digits.
pub fn numeric_text(b: &[u8]) -> Result<String, String> {
    let u16_at = |i: usize| -> Result<u16, String> {
        b.get(i..i + 2)
            .map(|s| u16::from_be_bytes([s[0], s[1]]))
            .ok_or_else(|| "truncated NUMERIC".to_string())
    };
    let ndigits = u16_at(0)? as usize;
    let weight = u16_at(2)? as i16 as i64;
    let sign = u16_at(4)?;
    let dscale = u16_at(6)? as usize;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("NaN is not a number".into()),
        _ => return Err("infinity is not a number".into()),
    }
    let mut digits = Vec::with_capacity(ndigits);
    for k in 0..ndigits {
        digits.push(u16_at(8 + 2 * k)?);
    }
    let mut int_part = String::new();
    let mut frac_part = String::new();
    // Digit k stands for digits[k] * 10000^(weight - k).
    for p in (0..=weight.max(0)).rev() {
        let k = weight - p;
        let d = if k >= 0 && (k as usize) < ndigits {
            digits[k as usize]
        } else {
            0
        };
        if int_part.is_empty() {
            if d != 0 || p == 0 {
                int_part = d.to_string();
            }
        } else {
            int_part.push_str(&format!("{d:04}"));
        }
    }
    if weight < 0 && int_part.is_empty() {
        int_part.push('0');
    }
    let mut k = weight + 1;
    while frac_part.len() < dscale {
        let d = if k >= 0 && (k as usize) < ndigits {
            digits[k as usize]
        } else {
            0
        };
        frac_part.push_str(&format!("{d:04}"));
        k += 1;
    }
    frac_part.truncate(dscale);
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    out.push_str(&int_part);
    if dscale > 0 {
        out.push('.');
        out.push_str(&frac_part);
    }
    Ok(out)
}

fn build<'q>(q: &SelectQuery) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    let mut query = sqlx::query(AssertSqlSafe(q.sql.clone()));
    for v in &q.binds {
        query = match v {
            Value::Null => query.bind(Option::<String>::None),
            Value::Bool(b) => query.bind(*b),
            Value::Int(i) => query.bind(*i),
            Value::Float(f) => query.bind(*f),
            Value::Decimal(d) => query.bind(*d),
            Value::Text(s) => query.bind(s.clone()),
            Value::Bytes(b) => query.bind(b.clone()),
            Value::Date(d) => query.bind(*d),
            Value::DateTime(d) => query.bind(*d),
            Value::DateTimeTz(d) => query.bind(*d),
        };
    }
    query
}

impl SourceDriver for PostgresSource {
    fn dialect(&self) -> &dyn Dialect {
        &PostgresDialect
    }

    fn rows<'a>(&'a self, q: &'a SelectQuery) -> RowStream<'a> {
        build(q)
            .fetch(&self.pool)
            .map(move |r| match r {
                Ok(row) => self.decode(&row),
                Err(e) => Err(self.query_error(e)),
            })
            .boxed()
    }

    fn can_write<'a>(&'a self, table: &'a str) -> BoxFuture<'a, Result<Option<bool>, SourceError>> {
        Box::pin(async move {
            let name = PostgresDialect.quote_path(table);
            let row: (bool,) = sqlx::query_as(
                "SELECT has_table_privilege($1, 'INSERT') OR has_table_privilege($1, 'UPDATE') OR has_table_privilege($1, 'DELETE') OR has_table_privilege($1, 'TRUNCATE')",
            )
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.query_error(e))?;
            Ok(Some(row.0))
        })
    }

    fn scalar_i64<'a>(
        &'a self,
        q: &'a SelectQuery,
    ) -> BoxFuture<'a, Result<Option<i64>, SourceError>> {
        Box::pin(async move {
            let row = build(q)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.query_error(e))?;
            match row {
                None => Ok(None),
                Some(r) => r
                    .try_get::<Option<i64>, _>(0)
                    .map_err(|e| self.query_error(e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::numeric_text;

    fn enc(ndigits: &[u16], weight: i16, neg: bool, dscale: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(ndigits.len() as u16).to_be_bytes());
        b.extend_from_slice(&weight.to_be_bytes());
        b.extend_from_slice(&(if neg { 0x4000u16 } else { 0 }).to_be_bytes());
        b.extend_from_slice(&dscale.to_be_bytes());
        for d in ndigits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numeric_binary_to_exact_text() {
        assert_eq!(
            numeric_text(&enc(&[1234, 5000], 0, false, 2)).unwrap(),
            "1234.50"
        );
        assert_eq!(numeric_text(&enc(&[], 0, false, 2)).unwrap(), "0.00");
        assert_eq!(
            numeric_text(&enc(&[12, 3456, 7890], 1, true, 4)).unwrap(),
            "-123456.7890"
        );
        assert_eq!(numeric_text(&enc(&[5], -1, false, 4)).unwrap(), "0.0005");
        assert_eq!(numeric_text(&enc(&[1], 2, false, 0)).unwrap(), "100000000");
        // 38 digits: 12345678901234567890123456789012345678
        let d = [12, 3456, 7890, 1234, 5678, 9012, 3456, 7890, 1234, 5678];
        assert_eq!(
            numeric_text(&enc(&d, 9, false, 0)).unwrap(),
            "12345678901234567890123456789012345678"
        );
    }
}
