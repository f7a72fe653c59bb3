//! The `sqlite` driver: legacy SQLite databases, read-only.
//!
//! SQLite is dynamically typed, so each cell is decoded by its storage class (INTEGER,
//! REAL, TEXT, BLOB), not by the declared column type. Text that is not valid UTF-8 (GBK
//! written by a legacy program) is passed on as bytes for the connector's `encoding`.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{AssertSqlSafe, ConnectOptions as _, Row as _, TypeInfo as _, ValueRef as _};

use super::{Dialect, Row, RowStream, SelectQuery, SourceDriver, SourceError};
use crate::value::Value;

pub struct SqliteDialect;

impl Dialect for SqliteDialect {
    fn quote_ident(&self, part: &str) -> String {
        format!("\"{}\"", part.replace('"', "\"\""))
    }

    fn placeholder(&self, n: usize) -> String {
        format!("?{n}")
    }
}

pub struct SqliteSource {
    connector: String,
    pool: SqlitePool,
    raw_text: bool,
}

impl SqliteSource {
    /// Opens the database read-only; it must exist.
    pub async fn open(
        connector: &str,
        path: &Path,
        raw_text: bool,
    ) -> Result<SqliteSource, SourceError> {
        if !path.is_file() {
            return Err(SourceError::Connect {
                connector: connector.to_string(),
                message: format!(
                    "SQLite database {} does not exist; check [source] path",
                    path.display()
                ),
                retryable: false,
            });
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(30))
            .disable_statement_logging();
        // One connection: at most one query at a time against the source.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| SourceError::Connect {
                connector: connector.to_string(),
                message: format!("{}: {e}", path.display()),
                retryable: false,
            })?;
        Ok(SqliteSource {
            connector: connector.to_string(),
            pool,
            raw_text,
        })
    }

    fn query_error(&self, e: sqlx::Error) -> SourceError {
        let retryable = matches!(&e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)
            || e.as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "5" || c == "6");
        SourceError::Query {
            connector: self.connector.clone(),
            message: e.to_string(),
            retryable,
        }
    }

    fn decode(&self, row: &SqliteRow) -> Result<Row, SourceError> {
        let mut out = Vec::with_capacity(row.len());
        for i in 0..row.len() {
            let class = {
                let raw = row
                    .try_get_raw(i)
                    .map_err(|e| self.decode_error(row, i, e))?;
                if raw.is_null() {
                    StorageClass::Null
                } else {
                    StorageClass::of(raw.type_info().name())
                }
            };
            let v = match class {
                StorageClass::Null => Value::Null,
                StorageClass::Integer => Value::Int(
                    row.try_get_unchecked::<i64, _>(i)
                        .map_err(|e| self.decode_error(row, i, e))?,
                ),
                StorageClass::Real => Value::Float(
                    row.try_get_unchecked::<f64, _>(i)
                        .map_err(|e| self.decode_error(row, i, e))?,
                ),
                StorageClass::Text => {
                    let bytes: &[u8] = row
                        .try_get_unchecked(i)
                        .map_err(|e| self.decode_error(row, i, e))?;
                    if self.raw_text {
                        Value::Bytes(bytes.to_vec())
                    } else {
                        match std::str::from_utf8(bytes) {
                            Ok(s) => Value::Text(s.to_string()),
                            Err(_) => Value::Bytes(bytes.to_vec()),
                        }
                    }
                }
                StorageClass::Blob => {
                    let bytes: &[u8] = row
                        .try_get_unchecked(i)
                        .map_err(|e| self.decode_error(row, i, e))?;
                    Value::Bytes(bytes.to_vec())
                }
            };
            out.push(v);
        }
        Ok(out)
    }

    fn decode_error(&self, row: &SqliteRow, i: usize, e: sqlx::Error) -> SourceError {
        use sqlx::Column as _;
        let column = row
            .columns()
            .get(i)
            .map(|c| c.name().to_string())
            .unwrap_or_else(|| format!("#{i}"));
        SourceError::Decode {
            connector: self.connector.clone(),
            column,
            message: e.to_string(),
        }
    }
}

enum StorageClass {
    Null,
    Integer,
    Real,
    Text,
    Blob,
}

impl StorageClass {
    fn of(name: &str) -> StorageClass {
        match name {
            "INTEGER" | "BOOLEAN" => StorageClass::Integer,
            "REAL" => StorageClass::Real,
            "BLOB" => StorageClass::Blob,
            "NULL" => StorageClass::Null,
            _ => StorageClass::Text,
        }
    }
}

fn build<'q>(
    q: &SelectQuery,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    let mut query = sqlx::query(AssertSqlSafe(q.sql.clone()));
    for v in &q.binds {
        query = match v {
            Value::Null => query.bind(Option::<i64>::None),
            Value::Bool(b) => query.bind(*b),
            Value::Int(i) => query.bind(*i),
            Value::Float(f) => query.bind(*f),
            Value::Decimal(d) => query.bind(d.to_string()),
            Value::Text(s) => query.bind(s.clone()),
            Value::Bytes(b) => query.bind(b.clone()),
            Value::Date(d) => query.bind(*d),
            Value::DateTime(d) => query.bind(*d),
            Value::DateTimeTz(d) => query.bind(*d),
        };
    }
    query
}

impl SourceDriver for SqliteSource {
    fn dialect(&self) -> &dyn Dialect {
        &SqliteDialect
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
